"""tau and target forwards per token on the transformers reference runtime.

Runs plain decoding, the suffix proposer and the draft-model proposer (chain
and tree) over the same prompts, greedy, and prints one markdown table: tau
(tokens per target forward, bonus included), target forwards per generated
token (1 / tau), acceptance by draft position, tokens/s on this machine, and
whether the outputs equal plain decoding.

Prompts: ``--num-prompts`` snippets cut deterministically from this Python's
standard-library sources (the first ``--prompt-lines`` lines of a function
definition), so any machine can reproduce them.

    python benchmarks/hf_tau.py --target DIR --draft DIR [--num-prompts 20]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sysconfig

os.environ.setdefault("OMP_NUM_THREADS", "2")


def stdlib_prompts(n: int, lines: int) -> list[str]:
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    out = []
    for f in files[::7]:
        with open(f, encoding="utf-8", errors="replace") as fh:
            text = fh.read().splitlines()
        for i, line in enumerate(text):
            if re.match(r"^\s*def \w+\(", line):
                out.append("\n".join(text[i:i + lines]) + "\n")
                break
        if len(out) == n:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--num-prompts", type=int, default=20)
    ap.add_argument("--prompt-lines", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specpack.config import DraftModelConfig, SuffixConfig
    from specpack.hf import generate
    from specpack.proposers.model.draft_model import DraftModelProposer
    from specpack.proposers.retrieval.suffix import SuffixProposer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.target)
    target = AutoModelForCausalLM.from_pretrained(a.target, dtype=torch.float32)
    draft = AutoModelForCausalLM.from_pretrained(a.draft, dtype=torch.float32)
    prompts = [tok(p, add_special_tokens=False).input_ids for p in
               stdlib_prompts(a.num_prompts, a.prompt_lines)]
    runs = [
        ("plain decoding", None, 8, 8),
        ("suffix (k=8)", SuffixProposer(SuffixConfig(), max_nodes=8), 8, 8),
        ("draft_model chain (k=4)",
         DraftModelProposer(draft, DraftModelConfig(draft_model=a.draft), max_nodes=4), 4, 4),
        ("draft_model tree (w=2, 12 nodes, depth 4)",
         DraftModelProposer(draft, DraftModelConfig(draft_model=a.draft, mode="tree",
                                                    tree_width=2, max_expand=4), max_nodes=12),
         12, 4),
    ]
    base = None
    print(f"# {len(prompts)} stdlib prompts, {a.max_new_tokens} new tokens each, greedy, "
          f"batch {a.batch_size}, {os.cpu_count()} CPUs")
    print("| method | tau | target forwards / token | acceptance by position | tokens/s | "
          "same as plain |")
    print("|---|---|---|---|---|---|")
    for name, prop, nodes, depth in runs:
        res = generate(target, prompts, prop, max_new_tokens=a.max_new_tokens, max_nodes=nodes,
                       max_depth=depth, batch_size=a.batch_size)
        s = res.summary()
        if base is None:
            base = res.tokens
        pos = ", ".join(f"{x:.2f}" for x in s["acceptance_by_position"][:8]) or "-"
        print(f"| {name} | {s['tau']:.2f} | {1 / s['tau']:.3f} | {pos} | "
              f"{s['tokens_per_s']:.0f} | {res.tokens == base} |")


if __name__ == "__main__":
    main()
