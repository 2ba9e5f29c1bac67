"""``specpack bench --server``: one ``vllm serve`` subprocess per method,
driven by concurrent OpenAI-compatible clients on 127.0.0.1.

Per phase (concurrency ``c``, category) exactly ``c`` client threads pull
requests from the category's queue; streaming completions give time to
first token and per-token timing; ``/metrics`` counters read before and
after give the phase's drafts and accepted tokens.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from specpack.bench.methods import Method, vllm_configs

_COUNTERS = {"num_drafts": "vllm:spec_decode_num_drafts_total",
             "num_draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
             "num_accepted_tokens": "vllm:spec_decode_num_accepted_tokens_total"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict:
    import requests

    text = requests.get(url + "/metrics", timeout=30).text
    out = {}
    for key, name in _COUNTERS.items():
        m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
        out[key] = float(m.group(1)) if m else 0.0
    pos = sorted((int(p), float(v)) for p, v in re.findall(
        r'^vllm:spec_decode_num_accepted_tokens_per_pos_total\{[^}]*position="(\d+)"[^}]*\} ([0-9.e+]+)$',
        text, re.M))
    out["accepted_per_pos"] = [v for _, v in pos]
    return out


class ServerError(RuntimeError):
    """The vLLM server exited or did not become healthy in time (message has the log tail)."""


def start_server(model: str, spec, extra, max_len: int, max_seqs: int, seed: int, log: Path,
                 timeout_s: float = 600, extra_args: tuple[str, ...] = ()):
    """Start ``python -m vllm.entrypoints.openai.api_server`` on a free loopback
    port (the CPU wheel's ``vllm`` console script is broken) with the default
    executor; return ``(process, base_url)`` once ``/health`` answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", str(max_len), "--max-num-seqs", str(max_seqs), "--seed", str(seed)]
    if spec:
        cmd += ["--speculative-config", json.dumps(spec)]
    if extra:
        cmd += ["--additional-config", json.dumps(extra)]
    cmd += list(extra_args)
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"))
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    with open(log, "w") as f:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    import requests

    deadline = time.time() + timeout_s
    while True:
        if proc.poll() is not None:
            raise ServerError(f"vLLM server exited, log {log}:\n" + log.read_text()[-6000:])
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if time.time() > deadline:
            stop_server(proc)
            raise ServerError(f"vLLM server did not start in {timeout_s:.0f} s, log {log}:\n"
                              + log.read_text()[-6000:])
        time.sleep(1)


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _client(url: str, model: str, queue: list, lock, results: dict) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=3600)
    while True:
        with lock:
            if not queue:
                return
            i, prompt, mnt = queue.pop(0)
        t0 = time.perf_counter()
        first = None
        tokens: list[int] = []
        stream = client.completions.create(model=model, prompt=prompt, max_tokens=mnt,
                                           temperature=0.0, stream=True,
                                           extra_body={"return_token_ids": True,
                                                       "ignore_eos": True})
        for chunk in stream:
            ids = getattr(chunk.choices[0], "token_ids", None) if chunk.choices else None
            if ids:
                if first is None:
                    first = time.perf_counter()
                tokens.extend(ids)
        end = time.perf_counter()
        n = len(tokens)
        results[i] = {"tokens": tokens, "ttft_s": (first or end) - t0, "latency_s": end - t0,
                      "tpot_s": (end - (first or end)) / (n - 1) if n > 1 else 0.0}


def run_vllm_server(method: Method, args, cats: dict, max_len: int, workdir: Path) -> dict:
    from transformers import AutoTokenizer

    spec, extra = vllm_configs(method, args.draft, args.num_speculative_tokens,
                               getattr(args, "policy", None), getattr(args, "datastore", None))
    log = workdir / f"server-{method.name.replace(':', '_')}-c{'_'.join(map(str, args.concurrency))}.log"
    try:
        proc, url = start_server(args.target, spec, extra, max_len, max(args.concurrency),
                                 args.seed, log)
    except ServerError as e:
        raise SystemExit(f"bench: {e}") from None
    tok = AutoTokenizer.from_pretrained(args.target)
    phases = []
    try:
        for c in args.concurrency:
            for cat, reqs in cats.items():
                queue = [(i, tok(r.prompt, add_special_tokens=False).input_ids, r.max_new_tokens)
                         for i, r in enumerate(reqs)]
                results: dict = {}
                lock = threading.Lock()
                before = scrape(url)
                t0 = time.perf_counter()
                threads = [threading.Thread(target=_client, args=(url, args.target, queue, lock, results))
                           for _ in range(min(c, len(reqs)))]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                wall = time.perf_counter() - t0
                after = scrape(url)
                spec_delta = {k: int(after[k] - before[k]) for k in _COUNTERS}
                a, b = after["accepted_per_pos"], before["accepted_per_pos"]
                b = b + [0.0] * (len(a) - len(b))
                spec_delta["accepted_per_pos"] = [int(x - y) for x, y in zip(a, b)]
                phases.append({"concurrency": c, "category": cat, "wall_s": wall,
                               "spec": spec_delta,
                               "requests": [results[i] for i in range(len(reqs))]})
    finally:
        stop_server(proc)
    return {"phases": phases}
