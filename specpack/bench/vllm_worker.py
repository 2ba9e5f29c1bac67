"""One vLLM engine process of ``specpack bench``: one method, its phases.

    python -m specpack.bench.vllm_worker --spec job.json --out result.json

A phase is (concurrency ``c``, category): the category's requests are fed
through ``LLMEngine`` keeping exactly ``min(c, remaining)`` in flight, and
vLLM's spec-decode counters are read before and after, so each phase gets
its own tau. Per request it records output token ids, time to first token
and finish time (wall clock of this process).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from specpack.bench.report import decisions_delta


def counters(llm) -> dict:
    from specpack.vllm_plugins.offline import spec_decode_stats

    return spec_decode_stats(llm.get_metrics())


def delta(after: dict, before: dict) -> dict:
    out = {k: after[k] - before[k] for k in ("num_drafts", "num_draft_tokens", "num_accepted_tokens")}
    a, b = after["accepted_per_pos"], before["accepted_per_pos"]
    b = b + [0] * (len(a) - len(b))
    out["accepted_per_pos"] = [x - y for x, y in zip(a, b)]
    return out


def run_phase(llm, prompts: list[list[int]], max_tokens: list[int], concurrency: int, tag: str):
    from vllm import SamplingParams

    eng = llm.llm_engine
    queue = list(range(len(prompts)))
    inflight: dict[str, int] = {}
    start: dict[int, float] = {}
    first: dict[int, float] = {}
    done: dict[int, float] = {}
    tokens: dict[int, list[int]] = {}
    t0 = time.perf_counter()

    def submit():
        while queue and len(inflight) < concurrency:
            i = queue.pop(0)
            rid = f"{tag}-{i}"
            params = SamplingParams(temperature=0.0, max_tokens=max_tokens[i], ignore_eos=True)
            eng.add_request(rid, {"prompt_token_ids": prompts[i]}, params)
            inflight[rid] = i
            start[i] = time.perf_counter()

    submit()
    while inflight:
        for out in eng.step():
            i = inflight.get(out.request_id)
            if i is None:
                continue
            now = time.perf_counter()
            if out.outputs and out.outputs[0].token_ids and i not in first:
                first[i] = now
            if out.finished:
                tokens[i] = list(out.outputs[0].token_ids)
                done[i] = now
                del inflight[out.request_id]
        submit()
    wall = time.perf_counter() - t0
    reqs = []
    for i in range(len(prompts)):
        n = len(tokens[i])
        tpot = (done[i] - first[i]) / (n - 1) if n > 1 else 0.0
        reqs.append({"tokens": tokens[i], "ttft_s": first[i] - start[i],
                     "latency_s": done[i] - start[i], "tpot_s": tpot})
    return wall, reqs


def decisions() -> dict | None:
    """Cumulative decision counters of the specpack step driver in this
    process (in-process engine), or None when no specpack method runs."""
    import sys

    if "specpack.step_driver" not in sys.modules:   # not a specpack method
        return None
    from specpack.step_driver import live_drivers

    drivers = live_drivers()
    return drivers[-1].stats() if drivers else None


def dump_trace(trace_dir: str, tag: str, before: dict | None) -> None:
    """Write the policy's per-step trace of the last phase as JSONL."""
    from specpack.step_driver import live_drivers

    drivers = live_drivers()
    trace = getattr(drivers[-1].proposer, "trace", None) if drivers else None
    if not trace:
        return
    first = (before or {}).get("proposer", {}).get("steps", 0)
    os.makedirs(trace_dir, exist_ok=True)
    with open(os.path.join(trace_dir, f"{tag}.trace.jsonl"), "w") as f:
        for rec in trace:
            if rec["step"] > first:
                f.write(json.dumps(rec) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    with open(a.spec) as f:
        job = json.load(f)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(job.get("kv_cache_gib", 2)))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    llm = LLM(model=job["model"], dtype="float32", enforce_eager=True,
              distributed_executor_backend="uni", max_model_len=job["max_model_len"],
              max_num_seqs=max(job["concurrency"]), seed=job["seed"], disable_log_stats=False,
              speculative_config=job["speculative_config"],
              additional_config=job["additional_config"] or {})
    tok = llm.get_tokenizer()
    phases = []
    # warm-up: one short request so first-phase timings exclude lazy initialisation
    run_phase(llm, [tok.encode("def f(x):\n", add_special_tokens=False)], [8], 1, "warm")
    for c in job["concurrency"]:
        for cat, reqs in job["categories"].items():
            prompts = [tok.encode(r["prompt"], add_special_tokens=False) for r in reqs]
            before, dec_before = counters(llm), decisions()
            wall, out = run_phase(llm, prompts, [r["max_new_tokens"] for r in reqs], c, f"{c}-{cat}")
            phases.append({"concurrency": c, "category": cat, "wall_s": wall,
                           "spec": delta(counters(llm), before), "requests": out,
                           "decisions": decisions_delta(decisions(), dec_before)})
            if job.get("trace_dir"):
                dump_trace(job["trace_dir"], f"c{c}-{cat}", dec_before)
    with open(a.out, "w") as f:
        json.dump({"phases": phases}, f)


if __name__ == "__main__":
    main()
