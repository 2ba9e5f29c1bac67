"""Stopping rules on constructed distributions, and after-the-fact truncation."""

import math

import numpy as np
import pytest
import torch

from specpack.draft import Draft
from specpack.proposers.policy.stopping import (ConfidenceRule, CumulativeRule, StopRule, SVIPRule,
                                         entropy_nats, top1, truncate_by_rule)


def test_entropy_edge_cases():
    assert entropy_nats([1.0, 0.0, 0.0]) == 0.0                      # zero entropy
    assert entropy_nats(np.full(8, 1 / 8)) == pytest.approx(math.log(8))  # uniform
    assert entropy_nats(torch.tensor([0.5, 0.5, 0.0])) == pytest.approx(math.log(2))
    assert top1(torch.tensor([0.1, 0.7, 0.2])) == pytest.approx(0.7)


def test_svip_threshold_is_h_squared_over_gamma():
    rule = SVIPRule(max_length=40, gamma=0.15, h=0.3)   # stop when H > 0.6 nats
    assert not rule.stop_before(1, np.array([1.0, 0.0]))       # H = 0: keep drafting
    assert rule.stop_before(1, np.full(4, 0.25))                # H = ln 4 = 1.386 > 0.6
    assert not rule.stop_before(1, np.full(2, 0.5) * [1, 1] * 0 + [0.9, 0.1])  # H = 0.325
    # just below / above 0.6 nats
    def dist_with_entropy(h):
        lo, hi = 0.5, 1.0  # two-point distribution, entropy decreasing in p on [0.5, 1]
        for _ in range(60):
            p = (lo + hi) / 2
            if entropy_nats([p, 1 - p]) > h:
                lo = p
            else:
                hi = p
        return np.array([p, 1 - p])
    assert not rule.stop_before(1, dist_with_entropy(0.59))
    assert rule.stop_before(1, dist_with_entropy(0.61))


def test_length_bound_reached_for_every_rule():
    certain = np.array([1.0, 0.0])
    for rule in (StopRule(max_length=3), SVIPRule(max_length=3), ConfidenceRule(max_length=3),
                 CumulativeRule(max_length=3)):
        assert not rule.stop_before(3, certain, 1.0)
        assert rule.stop_before(4, certain, 1.0)


def test_confidence_rule():
    rule = ConfidenceRule(threshold=0.4)
    assert rule.stop_before(1, np.full(4, 0.25))           # uniform: top-1 0.25 < 0.4
    assert not rule.stop_before(1, np.array([0.4, 0.6]))   # top-1 0.6
    assert not rule.stop_before(1, np.array([1.0]))        # zero entropy
    with pytest.raises(ValueError, match="distribution"):
        rule.stop_before(1, None)


def test_cumulative_rule_uses_path_probability():
    rule = CumulativeRule(threshold=0.6)          # stop once P(some reject) > 0.6
    assert not rule.stop_before(2, None, 0.5)     # 1 - 0.5 = 0.5
    assert rule.stop_before(2, None, 0.3)         # 0.7 > 0.6
    assert rule.admits(0.4) and not rule.admits(0.39)


def test_truncate_chain_by_cumulative():
    d = Draft.chain([5, 6, 7, 8], probs=np.array([0.9, 0.6, 0.45, 0.2], np.float32))
    out = truncate_by_rule(d, CumulativeRule(threshold=0.6))
    assert out.tokens.tolist() == [5, 6, 7]
    assert truncate_by_rule(d, CumulativeRule(threshold=0.6, max_length=2)).tokens.tolist() == [5, 6]
    assert len(truncate_by_rule(Draft.empty(), CumulativeRule())) == 0


def test_truncate_tree_keeps_parents_before_children():
    # root -> a(0.7) -> c(0.5); root -> b(0.3) -> d(0.29)
    d = Draft(np.array([1, 2, 3, 4], np.int32), np.array([-1, -1, 0, 1], np.int32),
              np.array([0.7, 0.3, 0.5, 0.29], np.float32))
    out = truncate_by_rule(d, CumulativeRule(threshold=0.6))
    assert out.tokens.tolist() == [1, 3]
    assert out.parents.tolist() == [-1, 0]
    # confidence on the empirical child distribution of the root: 0.7 / 0.3
    conf = truncate_by_rule(d, ConfidenceRule(threshold=0.8))
    assert len(conf) == 0
    conf = truncate_by_rule(d, ConfidenceRule(threshold=0.5))
    assert conf.tokens.tolist() == [1, 2, 3, 4]


def test_draft_model_applies_rule_while_drafting():
    from transformers import AutoModelForCausalLM  # noqa: F401

    from specpack.config import DraftModelConfig
    from specpack.proposers.model.draft_model import DraftModelProposer
    from specpack.protocols import Budget, RequestView
    from specpack.testing.tiny_models import tiny_vocab_llama

    model = tiny_vocab_llama(6, seed=1)
    prop = DraftModelProposer(model, DraftModelConfig(draft_model="m"), max_nodes=8)
    view = RequestView("r", np.array([1, 2, 3], np.int32), Budget(8, 8))
    full = prop.propose([view])[0]
    assert len(full) == 8
    # a rule that never lets the drafter start (top-1 < 1.01 always)
    none = prop.propose([view], stop_rule=ConfidenceRule(threshold=1.01))[0]
    assert len(none) == 0
    three = prop.propose([view], stop_rule=StopRule(max_length=3))[0]
    assert three.tokens.tolist() == full.tokens[:3].tolist()
    cum = prop.propose([view], stop_rule=CumulativeRule(threshold=0.5))[0]
    assert all(1 - p <= 0.5 for p in cum.probs)
    assert cum.tokens.tolist() == full.tokens[:len(cum)].tolist()
