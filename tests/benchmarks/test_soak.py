"""A short soak (about 2 minutes) of benchmarks/soak.py in the test suite:
a real vLLM OpenAI server, streaming clients of which some disconnect, a KV
cache small enough to preempt, and 1 % injected proposer faults and
malformed drafts; no failed request, no greedy mismatch."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# find_spec, not importorskip: importing vLLM here, at collection, would import
# Triton before tests/kernels sets TRITON_INTERPRET, and its kernels would then
# not run under the interpreter
pytestmark = [pytest.mark.engine,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                 reason="vLLM is not installed")]

ROOT = Path(__file__).resolve().parents[2]


def test_short_soak_with_faults(tiny_model_dir, tmp_path):
    out = tmp_path / "soak.json"
    settings = {"suffix_decoding_max_spec_factor": 2.0,
                "fault_injection": {"raise_rate": 0.01, "malformed_rate": 0.01}}
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="2",
               TOKENIZERS_PARALLELISM="false")
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"),
                        "--model", tiny_model_dir, "--method", "SuffixDecoding",
                        "--settings", json.dumps(settings), "--clients", "6",
                        "--minutes", "1", "--abort-share", "0.3", "--kv-blocks", "40",
                        "--max-tokens", "48", "--pool", "12", "--out", str(out),
                        "--workdir", str(tmp_path / "work")],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    res = json.loads(out.read_text())
    assert res["failed"] == 0 and res["mismatches"] == 0, res["failures"]
    assert res["completed"] > 0 and res["aborted"] > 0, res
    assert res["proposer_errors"] + res["malformed_drafts"] > 0, res   # faults were injected
    assert len(res["rss_mb"]) >= 3
