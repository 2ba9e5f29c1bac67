"""Fault injection (specpack/testing/faults.py) and malformed-draft dropping
in the shared step driver: injected faults and malformed drafts never reach
the engine and never change an output."""

import logging

import numpy as np
import pytest

from specpack.config import ConfigError, FaultInjectionConfig, SuffixConfig
from specpack.draft import Draft
from specpack.protocols import Budget, RequestView
from specpack.registry import build_pipeline, validate_pipeline
from specpack.step_driver import StepDriver
from specpack.testing.faults import MALFORMED_KINDS, FaultInjector

LOG = logging.getLogger("specpack.test")


def views(n, budget=4):
    ctx = np.array([5, 6, 7, 5, 6, 7, 5, 6], np.int32)
    return [RequestView(f"r{i}", ctx, Budget(budget, budget)) for i in range(n)]


def test_settings_are_validated_and_build_a_wrapper():
    prop = build_pipeline({"fault_injection": {"malformed_rate": 0.5}}, method="suffix",
                          max_nodes=4)
    assert isinstance(prop, FaultInjector)
    pol = build_pipeline({"fault_injection": {"raise_rate": 0.1},
                          "policy": {"kind": "fixed", "num_tokens": 2}}, method="suffix",
                         max_nodes=4)
    assert all(isinstance(p, FaultInjector) for p in pol.proposers)
    with pytest.raises(ConfigError, match=r"fault_injection: field 'raise_rate' = 2.0"):
        validate_pipeline({"fault_injection": {"raise_rate": 2.0}}, method="suffix")
    with pytest.raises(ConfigError, match="fault_injection: unknown field 'rate'"):
        validate_pipeline({"fault_injection": {"rate": 0.1}}, method="suffix")


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_every_malformed_kind_is_dropped_for_its_request_only(kind, caplog):
    from specpack.proposers.retrieval.suffix import SuffixProposer

    inj = FaultInjector(SuffixProposer(SuffixConfig(), max_nodes=4), FaultInjectionConfig(),
                        max_nodes=4)
    inj._kind = MALFORMED_KINDS.index(kind)
    good = inj.inner.propose(views(1))[0]
    bad = inj._malformed(views(1)[0])
    d = StepDriver(inj, name="t", logger=LOG, vocab_size=100)
    if kind == "over_budget":                          # trimmed, not malformed
        assert d.malformed_reason(bad) is None
        return
    assert d.malformed_reason(bad) is not None
    assert d.malformed_reason(good) is None
    inj.inner.propose = lambda batch, stop_rule=None: [bad, good]
    with caplog.at_level(logging.ERROR, logger="specpack.test"):
        out = d.propose(views(2))
        out2 = d.propose(views(2))
    assert len(out[0]) == 0 and len(out2[0]) == 0
    assert out[1].tokens.tolist() == good.tokens[:4].tolist()
    assert d.malformed == 2 and d.errors == 0
    assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == 1


def test_raise_errors_makes_malformed_drafts_loud():
    d = StepDriver(build_pipeline({}, method="suffix"), name="t", logger=LOG,
                   raise_errors=True, vocab_size=3)
    with pytest.raises(ValueError, match="outside"):
        d.propose(views(1))


def test_injected_faults_are_counted_and_absorbed():
    prop = build_pipeline({"fault_injection": {"raise_rate": 0.1, "malformed_rate": 0.2,
                                               "hook_raise_rate": 0.2, "seed": 3}},
                          method="suffix", max_nodes=4)
    d = StepDriver(prop, name="t", logger=LOG, vocab_size=100)
    for step in range(50):
        out = d.propose(views(4))
        assert len(out) == 4 and all(len(x) <= 4 for x in out)
        d.observe([(f"r{i}", 1) for i in range(4)])
    d.release("r0", finished=True)
    injected = prop.describe()["fault_injection"]
    assert injected["raise"] > 0 and sum(v for k, v in injected.items()
                                         if k.startswith("malformed")) > 0
    assert d.errors > 0 and d.malformed > 0


def test_reference_runtime_stays_lossless_under_faults(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from specpack.hf import generate
    from specpack.testing.tiny_models import random_prompts

    target = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    prompts = random_prompts(2, 6)
    ref = generate(target, prompts, None, max_new_tokens=24).tokens
    prop = build_pipeline({"suffix_decoding_max_spec_factor": 2.0,
                           "fault_injection": {"raise_rate": 0.05, "malformed_rate": 0.2,
                                               "hook_raise_rate": 0.05}},
                          method="suffix", max_nodes=8)
    res = generate(target, prompts, prop, max_new_tokens=24, isolate_errors=True)
    assert res.tokens == ref
    assert res.decisions["malformed"] > 0 and res.tau > 1.0


def test_batch_check_agrees_with_the_per_draft_check():
    """The driver checks a whole batch at once and falls back to the per-draft
    check only when something is wrong: both must agree on every kind."""
    from specpack.proposers.retrieval.suffix import SuffixProposer

    inj = FaultInjector(SuffixProposer(SuffixConfig(), max_nodes=4), FaultInjectionConfig(),
                        max_nodes=4)
    d = StepDriver(inj, name="t", logger=LOG, vocab_size=100)
    good = [Draft.chain([1, 2, 3]), Draft([4, 5, 6], [-1, -1, 1]), Draft.empty()]
    bad = [inj._malformed(views(1)[0]) for _ in MALFORMED_KINDS]
    bad.append(Draft.trusted(np.array([1, 2], np.int32), np.array([-1, 1], np.int32)))
    for batch in [good, good + [None]] + [good + [b] for b in bad] + [[b] for b in bad]:
        expect = all(x is None or d.malformed_reason(x) is None for x in batch)
        assert d._batch_well_formed(batch) == expect, batch
