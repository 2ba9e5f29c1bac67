"""Soak a vLLM OpenAI server running a specpack method: load, aborts, preemption, faults.

    python benchmarks/soak.py --model ../shared/models/stdlib-target \\
        --method SuffixDecoding --settings '{"suffix_decoding_max_spec_factor": 2.0}' \\
        --clients 32 --minutes 30 --abort-share 0.2 --kv-blocks 512 --out soak.json
    # with 1 % injected proposer faults and malformed drafts:
    ... --settings '{"fault_injection": {"raise_rate": 0.01, "malformed_rate": 0.01}}'

1. Starts the server *without* speculation and computes the greedy reference
   output of every prompt of its pool (random lengths cut from the built-in
   workload, or ``--workload``), then stops it.
2. Starts the server with ``specpack.vllm_plugins.<method>`` and the given
   specpack settings (any method, incl. a ``policy`` and
   ``fault_injection``), a KV cache small enough to force preemption
   (``--block-size 32 --num-gpu-blocks-override N``: CPU attention needs
   block sizes that are multiples of 32), on 127.0.0.1 only.
3. Drives ``--clients`` concurrent streaming clients for ``--minutes``: each
   picks a random pool prompt and a random ``max_tokens``; a share
   ``--abort-share`` disconnects after a random number of tokens.
4. Every streamed token sequence (complete or aborted) must be a prefix of
   the reference (greedy); anything else is a mismatch. Samples server RSS
   (the server's process tree) every 10 s and vLLM's preemption counter.

Prints and writes JSON: requests completed / aborted / failed, greedy
mismatches, preemptions, RSS samples and growth over the last two thirds
of the run, and specpack's fault counters read from the server log. Exit
status 1 on any failed request or mismatch, 2 if a server does not start.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path


def pool_prompts(tok, workload: str | None, n: int, seed: int) -> list[list[int]]:
    """``n`` prompts of random lengths (16-600 tokens) cut from the workload."""
    from specpack.bench.workload import BUILTIN_DIR, load_workload

    texts = [r.prompt for r in load_workload(workload or BUILTIN_DIR / "default.jsonl")]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = tok(texts[i % len(texts)], add_special_tokens=False).input_ids
        length = rng.randint(16, min(600, len(ids))) if len(ids) > 16 else len(ids)
        start = rng.randint(0, len(ids) - length)
        out.append(ids[start:start + length])
    return out


def stream(url: str, model: str, prompt: list[int], max_tokens: int,
           abort_after: int | None) -> tuple[list[int], bool]:
    """Streamed token ids and whether the client disconnected early."""
    import requests

    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "return_token_ids": True}
    tokens: list[int] = []
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices"):
                tokens.extend(chunk["choices"][0].get("token_ids") or [])
            if abort_after is not None and len(tokens) >= abort_after:
                return tokens, True          # closing the response disconnects
    return tokens, False


def tree_rss_mb(pid: int) -> float:
    import psutil

    p = psutil.Process(pid)
    procs = [p] + p.children(recursive=True)
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def preemptions(url: str) -> float:
    import requests

    text = requests.get(url + "/metrics", timeout=30).text
    return sum(float(v) for v in re.findall(r"^vllm:num_preemptions_total\{[^}]*\} ([0-9.e+]+)$",
                                           text, re.M))


def fault_counters(log: Path) -> dict:
    """The last 'N proposer errors, M malformed drafts' line the adapter logged."""
    found = re.findall(r"(\d+) proposer errors, (\d+) malformed drafts", log.read_text())
    errors, malformed = map(int, found[-1]) if found else (0, 0)
    return {"proposer_errors": errors, "malformed_drafts": malformed}


def soak(a) -> dict:
    from transformers import AutoTokenizer

    from specpack.bench.server import ServerError, start_server, stop_server
    from specpack.config import json_object

    settings = json_object(a.settings, "--settings")
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="specpack-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(a.model)
    pool = pool_prompts(tok, a.workload, a.pool, a.seed)
    kv = ("--block-size", "32", "--num-gpu-blocks-override", str(a.kv_blocks))
    max_len = 600 + a.max_tokens + 32
    print(f"soak: references for {len(pool)} prompts (no speculation) ...", flush=True)
    try:
        proc, url = start_server(a.model, None, None, max_len, a.clients, a.seed,
                                 workdir / "reference.log", extra_args=kv)
    except ServerError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2)
    try:
        refs = [stream(url, a.model, p, a.max_tokens, None)[0] for p in pool]
    finally:
        stop_server(proc)
    spec = {"model": f"specpack.vllm_plugins.{a.method}", "num_speculative_tokens": a.k}
    log = workdir / "server.log"
    try:
        proc, url = start_server(a.model, spec, {"specpack": settings}, max_len, a.clients,
                                 a.seed, log, extra_args=kv)
    except ServerError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2)
    counts = {"completed": 0, "aborted": 0, "failed": 0, "mismatches": 0}
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.time() + 60 * a.minutes
    rss: list[tuple[float, float]] = []

    def client(cid: int) -> None:
        rng = random.Random(a.seed * 1000 + cid)
        while time.time() < deadline:
            i = rng.randrange(len(pool))
            mt = rng.randint(8, a.max_tokens)
            abort = rng.randint(1, mt) if rng.random() < a.abort_share else None
            try:
                got, aborted = stream(url, a.model, pool[i], mt, abort)
            except Exception as e:  # a failed request is what the soak must never see
                with lock:
                    counts["failed"] += 1
                    failures.append(f"prompt {i}: {type(e).__name__}: {e}"[:300])
                continue
            ok = got == refs[i][:len(got)] and (aborted or len(got) == mt)
            with lock:
                counts["aborted" if aborted else "completed"] += 1
                if not ok:
                    counts["mismatches"] += 1
                    failures.append(f"prompt {i}: {len(got)} tokens differ from the reference")

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(a.clients)]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append((round(time.time() - t0, 1), round(tree_rss_mb(proc.pid), 1)))
            time.sleep(10)
        pre = preemptions(url)
    finally:
        stop_server(proc)
    late = [m for t, m in rss if t >= (time.time() - t0) / 3] or [m for _, m in rss]
    growth = (late[-1] - late[0]) / late[0] if late and late[0] else 0.0
    return {"method": a.method, "settings": settings, "clients": a.clients,
            "minutes": a.minutes, "abort_share": a.abort_share, "kv_blocks": a.kv_blocks,
            **counts, "preemptions": pre, "rss_mb": rss,
            "rss_growth_last_two_thirds": round(growth, 4),
            **fault_counters(log), "failures": failures[:20], "log": str(log)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="HF checkpoint dir of the target")
    ap.add_argument("--method", default="SuffixDecoding",
                    help="specpack vLLM class (specpack methods lists them)")
    ap.add_argument("--settings", default="{}", help="specpack settings JSON (incl. policy, "
                    "fault_injection)")
    ap.add_argument("--k", type=int, default=8, help="num_speculative_tokens")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--abort-share", type=float, default=0.2)
    ap.add_argument("--kv-blocks", type=int, default=512, help="KV blocks of 32 tokens: small "
                    "enough that vLLM preempts under the client load")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--pool", type=int, default=48, help="distinct prompts")
    ap.add_argument("--workload", default=None, help="JSONL the prompts are cut from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default="soak.json")
    a = ap.parse_args(argv)
    res = soak(a)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "rss_mb"}, indent=1))
    if res["failed"] or res["mismatches"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
