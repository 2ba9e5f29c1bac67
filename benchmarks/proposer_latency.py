"""Per-request propose + update latency: specpack SuffixDecoding vs vLLM NgramProposer.

Both proposers see identical inputs in one run: a token stream made by
tokenizing this Python's standard-library sources with a locally trained
byte-level BPE tokenizer (8K vocab), at context lengths 1K, 8K and 32K. Each
request starts with ``L`` context tokens (the first call, which builds
specpack's per-request trie, is reported separately as "build"), then takes
``--steps`` decoding steps; between steps the context grows by 1-9 tokens
(one bonus token plus a seeded random number of accepted drafts), the same
schedule for both proposers. Reported per step: median and p90 wall time of
one ``propose`` call for one request (specpack's call includes its trie
update), and how many tokens of the proposed draft match the true
continuation (a hardware-independent quality signal).

    python benchmarks/proposer_latency.py [--steps 300] [--k 8]
"""

from __future__ import annotations

import argparse
import glob
import os
import sysconfig
import tempfile
import time
from types import SimpleNamespace

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def stdlib_tokens(n_tokens: int) -> np.ndarray:
    from tokenizers import Tokenizer

    from specpack.testing.tiny_models import build_tokenizer

    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
    texts, size = [], 0
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            t = fh.read()
        texts.append(t)
        size += len(t)
        if size > n_tokens * 4:
            break
    with tempfile.TemporaryDirectory() as d:
        build_tokenizer(d, vocab_size=8192, texts=texts[:40])
        tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    ids = []
    for t in texts:
        ids.extend(tok.encode(t).ids)
        if len(ids) >= n_tokens:
            break
    return np.asarray(ids[:n_tokens], np.int32)


def matched(draft, truth) -> int:
    n = 0
    for a, b in zip(draft, truth):
        if a != b:
            break
        n += 1
    return n


def bench(stream: np.ndarray, L: int, steps: int, k: int, seed: int):
    from vllm.v1.spec_decode.ngram_proposer import NgramProposer

    from specpack.protocols import Budget, RequestView
    from specpack.proposers.retrieval.suffix import SuffixProposer

    rng = np.random.default_rng(seed)
    lengths = [L]
    for _ in range(steps):
        lengths.append(lengths[-1] + 1 + int(rng.integers(0, k + 1)))
    width = lengths[-1] + k + 2
    max_len = width + 16
    cfg = SimpleNamespace(
        speculative_config=SimpleNamespace(prompt_lookup_min=2, prompt_lookup_max=5,
                                           num_speculative_tokens=k),
        model_config=SimpleNamespace(max_model_len=max_len),
        scheduler_config=SimpleNamespace(max_num_seqs=1),
        parallel_config=SimpleNamespace(tensor_parallel_size=1),
    )
    ngram = NgramProposer(cfg)
    row = np.zeros((1, max_len), np.int32)
    row[0, :width] = stream[:width]
    suffix = SuffixProposer(max_nodes=k)

    res = {}
    t0 = time.perf_counter()
    suffix.propose([RequestView("r", stream[:L], Budget(k, k))])
    res["suffix_build_ms"] = (time.perf_counter() - t0) * 1e3
    st, sm, nt, nm = [], [], [], []
    prev = L
    for n in lengths[1:]:
        truth = stream[n:n + k].tolist()
        t = time.perf_counter()
        d = suffix.propose([RequestView("r", stream[:n], Budget(k, k))])[0]
        tokens = d.best_path_tokens()[:k].tolist()
        st.append(time.perf_counter() - t)
        sm.append(matched(tokens, truth))
        sampled = [stream[prev:n].tolist()]
        t = time.perf_counter()
        out = ngram.propose(k, sampled, np.array([n], np.int32), row)
        nt.append(time.perf_counter() - t)
        nm.append(matched(out[0], truth))
        prev = n
    for name, ts, ms in (("suffix", st, sm), ("ngram", nt, nm)):
        res[f"{name}_median_us"] = float(np.median(ts) * 1e6)
        res[f"{name}_p90_us"] = float(np.percentile(ts, 90) * 1e6)
        res[f"{name}_matched"] = float(np.mean(ms))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", default="1024,8192,32768")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    contexts = [int(c) for c in a.contexts.split(",")]
    need = max(contexts) + a.steps * (a.k + 1) + a.k + 64
    stream = stdlib_tokens(need)
    if stream.size < need:
        raise SystemExit(f"only {stream.size} stdlib tokens available, need {need}")
    print(f"# proposer latency, k={a.k}, {a.steps} steps per context, one request, "
          f"{os.cpu_count()} CPUs")
    print("| context | specpack suffix median us | p90 us | build ms | matched/step "
          "| vLLM ngram median us | p90 us | matched/step |")
    print("|---|---|---|---|---|---|---|---|")
    for L in contexts:
        r = bench(stream, L, a.steps, a.k, a.seed)
        print(f"| {L} | {r['suffix_median_us']:.1f} | {r['suffix_p90_us']:.1f} | "
              f"{r['suffix_build_ms']:.1f} | {r['suffix_matched']:.2f} | "
              f"{r['ngram_median_us']:.1f} | {r['ngram_p90_us']:.1f} | {r['ngram_matched']:.2f} |")


if __name__ == "__main__":
    main()
