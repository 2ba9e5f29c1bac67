"""End-to-end smoke test of specpack on a real SGLang server (needs a GPU).

    python benchmarks/sglang_smoke.py --model-path MODEL [--algorithm SPECPACK_SUFFIX]
        [--num-draft-tokens 16] [--config specpack.json] [--concurrency 8]
        [--workload specpack/bench/workloads/default.jsonl] [--max-new-tokens 128]

Launches ``python -m sglang.launch_server`` twice on the same model - without
speculation, then with ``--speculative-algorithm ALGORITHM`` (settings file
via ``SPECPACK_SGLANG_CONFIG``) - sends the same greedy requests to both
(``/generate`` with token ids, ``concurrency`` in flight), checks that every
output is token-identical, and prints tau (SGLang's ``spec_accept_length``:
completion tokens / verify forwards) and tokens/s for both. Exit status 1
when any output differs, 2 when a server fails to start.

Needs ``sglang==0.5.23`` installed with its CUDA kernels (``pip install
sglang==0.5.23``) and specpack installed in the same environment. SGLang
cannot serve on a CPU machine from PyPI, so this is not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def launch(model: str, extra: list[str], env: dict, log_path: str, timeout_s: float):
    port = free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model,
           "--host", "127.0.0.1", "--port", str(port), "--random-seed", "0", *extra]
    with open(log_path, "w") as log:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except Exception:
            time.sleep(2)
    stop(proc)
    raise RuntimeError(f"server not healthy after {timeout_s:.0f} s; see {log_path}")


def stop(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except Exception:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except Exception:
            pass


def run(url: str, prompts: list[list[int]], max_new: int, concurrency: int) -> dict:
    def one(ids):
        r = post(url + "/generate", {"input_ids": ids, "sampling_params": {
            "temperature": 0.0, "max_new_tokens": max_new, "ignore_eos": True}})
        return r.get("output_ids") or r["text"], r.get("meta_info", {})

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outs = list(pool.map(one, prompts))
    wall = time.perf_counter() - t0
    tokens = sum(m.get("completion_tokens", 0) for _, m in outs)
    verify = sum(m.get("spec_verify_ct", 0) for _, m in outs)
    return {"outputs": [o for o, _ in outs], "wall_s": wall, "tokens": tokens,
            "tokens_per_s": tokens / wall if wall else 0.0,
            "tau": tokens / verify if verify else 1.0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--algorithm", default="SPECPACK_SUFFIX")
    ap.add_argument("--num-draft-tokens", type=int, default=16)
    ap.add_argument("--config", default=None, help="specpack settings JSON (SPECPACK_SGLANG_CONFIG)")
    ap.add_argument("--workload", default=None, help="JSONL with 'prompt' (default: built-in)")
    ap.add_argument("--max-prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--startup-timeout", type=float, default=900)
    ap.add_argument("--extra-args", default="", help="more launch_server flags, one string")
    ap.add_argument("--out", default="sglang-smoke")
    a = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from specpack.bench.workload import BUILTIN_DIR, load_workload

    os.makedirs(a.out, exist_ok=True)
    reqs = load_workload(a.workload or str(BUILTIN_DIR / "default.jsonl"))[: a.max_prompts]
    tok = AutoTokenizer.from_pretrained(a.model_path)
    prompts = [tok(r.prompt, add_special_tokens=False).input_ids for r in reqs]
    env = dict(os.environ)
    if a.config:
        env["SPECPACK_SGLANG_CONFIG"] = os.path.abspath(a.config)
    extra = a.extra_args.split() if a.extra_args else []
    results = {}
    for name, flags in (("none", extra),
                        (a.algorithm, extra + ["--speculative-algorithm", a.algorithm,
                                               "--speculative-num-draft-tokens",
                                               str(a.num_draft_tokens)])):
        log = os.path.join(a.out, f"server-{name}.log")
        try:
            proc, url = launch(a.model_path, flags, env, log, a.startup_timeout)
        except RuntimeError as e:
            print(f"{name}: {e}", file=sys.stderr)
            return 2
        try:
            run(url, prompts[:2], 8, 2)                       # warm-up
            results[name] = run(url, prompts, a.max_new_tokens, a.concurrency)
        finally:
            stop(proc)
    base, spec = results["none"], results[a.algorithm]
    same = [x == y for x, y in zip(base["outputs"], spec["outputs"])]
    print("| method | tau | tokens/s | x vs none | greedy match |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['tau']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f} | "
              f"{'yes' if all(same) else f'{sum(same)}/{len(same)}'} |")
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump({k: {kk: vv for kk, vv in v.items() if kk != "outputs"}
                   for k, v in results.items()} | {"greedy_match": all(same)}, f, indent=1)
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
