"""PolicyProposer: arms, caps, auto-off, feedback routing, config errors."""

import numpy as np
import pytest

from specpack.config import ConfigError, SuffixConfig, parse_policy_config
from specpack.draft import Draft
from specpack.protocols import NO_STOP, Budget, Feedback, Proposer, RequestView
from specpack.proposers.policy.policy_proposer import PolicyProposer
from specpack.registry import build_pipeline, validate_pipeline


class Counting(Proposer):
    """A proposer that drafts ``budget.max_nodes`` tokens with fixed probabilities."""

    def __init__(self, config, max_nodes):
        self.config = config
        self.max_nodes = max_nodes
        self.calls, self.observed, self.released = [], [], []

    def propose(self, batch, stop_rule=NO_STOP):
        self.calls.append([(v.key, v.budget.max_nodes) for v in batch])
        return [Draft.chain(np.arange(v.budget.max_nodes, dtype=np.int32) + 1,
                            probs=np.full(v.budget.max_nodes, 0.9, np.float32) **
                            np.arange(1, v.budget.max_nodes + 1))
                for v in batch]

    def observe(self, fb):
        self.observed += list(fb)

    def release(self, key, finished=True):
        self.released.append((key, finished))


def make(policy, max_nodes=8):
    cfg = parse_policy_config(policy, default_method="suffix")
    return PolicyProposer(cfg, SuffixConfig(), max_nodes=max_nodes, build=Counting)


def views(n, budget=8):
    return [RequestView(f"r{i}", np.arange(10, dtype=np.int32), Budget(budget, budget))
            for i in range(n)]


def test_fixed_length_and_engine_budget_cap():
    p = make({"kind": "fixed", "num_tokens": 3, "auto_off": False})
    out = p.propose(views(2))
    assert [len(d) for d in out] == [3, 3]
    out = p.propose(views(1, budget=2))           # the engine's room wins
    assert len(out[0]) == 2


def test_acceptance_ema_budget_follows_accepted_length():
    p = make({"kind": "acceptance_ema", "auto_off": False, "ema_decay": 0.0})
    v = views(1)
    assert len(p.propose(v)[0]) == 8              # no history: engine budget
    p.observe([Feedback("r0", 8, 2)])
    assert len(p.propose(v)[0]) == 3              # ceil(2) + 1
    p.observe([Feedback("r0", 3, 3)])             # fully accepted: grows
    assert len(p.propose(v)[0]) == 5              # target 4 -> ceil(4) + 1
    p.observe([Feedback("r0", 5, 0)])
    assert len(p.propose(v)[0]) == 1


def test_cumulative_rule_truncates_drafts_without_distributions():
    p = make({"kind": "cumulative", "cumulative_threshold": 0.3, "auto_off": False})
    d = p.propose(views(1))[0]
    # path probs 0.9^j: keep while 1 - 0.9^j <= 0.3 -> j <= 3
    assert len(d) == 3


def test_bandit_arms_route_feedback_and_learn():
    p = make({"kind": "ucb", "auto_off": False, "ucb_c": 0.2,
              "arms": [{"num_tokens": 2}, {"num_tokens": 6}]})
    for step in range(200):
        p.observe_step(1 + 2, 2, 0.010 + 0.001 * 3)
        out = p.propose(views(1))
        n = len(out[0])
        # simulated engine: every drafted token accepted; step cost grows slowly
        p.observe([Feedback("r0", n, n)])
        p.observe_step(1 + n, n, 0.010 + 0.001 * (1 + n))
    counts = p.describe()["arm_counts"]
    assert counts[1] > 3 * counts[0], counts      # 7 tokens / 17 ms beats 3 / 13 ms


def test_bandit_pays_for_step_cost():
    """When each drafted token costs more than it brings, the short arm wins."""
    p = make({"kind": "thompson", "auto_off": False,
              "arms": [{"num_tokens": 1}, {"num_tokens": 8}]})
    for _ in range(300):
        out = p.propose(views(1))
        n = len(out[0])
        acc = min(n, 1)                            # only the first token is ever accepted
        p.observe([Feedback("r0", n, acc)])
        p.observe_step(1 + n, n, 0.002 + 0.004 * (1 + n))
    counts = p.describe()["arm_counts"]
    assert counts[0] > 2 * counts[1], counts


def test_auto_off_turns_speculation_off_at_high_load_only():
    p = make({"kind": "fixed", "auto_off": True, "explore": 0.0})
    rng = np.random.default_rng(0)
    for _ in range(50):                            # verification dominates: b = 1 ms/token
        n = int(rng.integers(1, 600))
        p.observe_step(n, 0, 0.002 + 0.001 * n)
    batch = views(64)
    for v in batch:                                # acceptance 0.3
        p.observe([Feedback(v.key, 10, 3)])
    out = p.propose(batch)
    assert all(len(d) == 0 for d in out)
    assert p.spec_off_steps == 1
    # one request, same machine: the fixed cost dominates, drafting pays
    out = p.propose(batch[:1])
    assert len(out[0]) > 0


def test_release_forwards_to_every_proposer_and_bounds_state():
    p = make({"kind": "exp3", "auto_off": False, "max_tracked_requests": 5,
              "arms": [{"num_tokens": 2}, {"num_tokens": 4, "proposer":
                                           {"method": "suffix",
                                            "suffix_decoding_min_token_prob": 0.5}}]})
    assert len(p.proposers) == 2
    for i in range(20):
        p.propose([RequestView(f"k{i}", np.arange(4, dtype=np.int32), Budget(8, 8))])
    assert len(p._states) == 5
    p.release("k19", finished=True)
    assert all(("k19", True) in q.released for q in p.proposers)


def test_config_errors_name_field_and_allowed_values():
    with pytest.raises(ConfigError, match="needs 'arms' with at least 2"):
        build_pipeline({"policy": {"kind": "ucb"}}, method="suffix")
    with pytest.raises(ConfigError, match="'arms' only applies"):
        build_pipeline({"policy": {"kind": "fixed", "arms": [{"num_tokens": 2}] * 2}},
                       method="suffix")
    with pytest.raises(ConfigError, match=r"arms\[1\].num_tokens = 16 exceeds"):
        validate_pipeline({"policy": {"kind": "ucb", "arms": [{"num_tokens": 2},
                                                              {"num_tokens": 16}]}},
                          method="suffix", max_nodes=8)
    with pytest.raises(ConfigError, match=r"arms\[0\].proposer: unknown field 'typo'"):
        validate_pipeline({"policy": {"kind": "ucb", "arms": [
            {"num_tokens": 2, "proposer": {"method": "suffix", "typo": 1}}, {"num_tokens": 3}]}},
            method="suffix")
    with pytest.raises(ConfigError, match="'svip' needs a drafter with draft distributions"):
        validate_pipeline({"policy": {"kind": "svip"}}, method="suffix")
    with pytest.raises(ConfigError, match="field 'kind' = 'svp'"):
        validate_pipeline({"policy": {"kind": "svp"}}, method="suffix")
    with pytest.raises(ConfigError, match="field 'svip_h' = -1"):
        validate_pipeline({"draft_model": "m", "policy": {"kind": "svip", "svip_h": -1.0}},
                          method="draft_model")
    with pytest.raises(ConfigError, match="policy: unknown field 'gama'"):
        validate_pipeline({"policy": {"kind": "fixed", "gama": 1}}, method="suffix")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        validate_pipeline({"policy": [1]}, method="suffix")
