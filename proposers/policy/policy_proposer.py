"""The policy layer: how much each request speculates at each step.

:class:`PolicyProposer` wraps one or more proposers and is itself a
:class:`~specpack.protocols.Proposer`, so every engine adapter hosts it
unchanged. Per step it

1. picks a configuration and a length cap per request (``PolicyConfig.kind``):

   * ``fixed`` - the same length for everyone;
   * ``svip`` / ``threshold`` / ``cumulative`` - the drafter stops per
     position (:mod:`specpack.proposers.policy.stopping`); drafters with
     distributions (draft model) apply the rule while drafting, others after
     the fact on their node probabilities;
   * ``acceptance_ema`` - for drafters without probabilities: the cap is
     ``ceil(L) + 1`` with ``L`` the request's exponential moving average of
     accepted length (a fully accepted draft counts one more, so the cap can
     grow);
   * ``ucb`` / ``exp3`` / ``thompson`` - a bandit (:mod:`specpack.proposers.policy.bandits`)
     over ``arms`` = (proposer config, length), scoped per request, global,
     or ``batch_quota`` (one arm per step for the whole batch; the cost
     model picks which requests speculate). Reward = emitted tokens per
     second of step cost, the request's share ``(a + c D) / B + b (1 + k)``
     under the fitted cost model, so a longer draft that slows the step is
     paid for;

2. with ``auto_off``, before drafting, cuts the caps of drafters that pay
   per drafted depth (model drafters: ``c`` in the step-cost model) with the
   goodput-greedy rule :func:`~specpack.proposers.policy.cost_model.choose_draft_lengths`
   on per-request acceptance rates (exponentially weighted success/failure
   counts with a Beta(1, 1) prior shrunk to the batch-wide rate); retrieval
   drafters draft to their cap (drafting is cheap);
3. asks each proposer for the requests assigned to it, with the capped budget;
4. with ``auto_off``, after drafting, keeps only the nodes that pay for
   their verification: node values are the drafter's own scores calibrated
   online against observed acceptance
   (:class:`~specpack.proposers.policy.cost_model.AcceptanceCalibration`),
   and :func:`~specpack.proposers.policy.cost_model.trim_to_goodput` keeps
   the top values while ``value / b > E / T`` (drafting cost sunk). A step
   where nothing pays runs without speculation. One request of a step in
   ``explore`` (5 %) keeps its whole draft, so the cost fit and the
   calibration keep seeing long drafts; until the cost model has seen a few
   steps, drafts are at most :data:`WARMUP_LENGTH` long.

Why the per-node step (issue 13): one acceptance rate per request averages
drafts that copy known text (scored ~1, accepted) with drafts that guess
(accepted rarely). On traffic the drafter was not tuned on, that average
is middling for everyone, and a rule that decides lengths from it gives
every request the same short draft - the copies are cut, the guesses still
verified - or switches speculation off although half the drafts pay.

Engines report each step's wall time with :meth:`observe_step`; feedback
(drafted, accepted) arrives through :meth:`observe` as for any proposer.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Hashable, Sequence

import numpy as np

from specpack.config import BANDIT_KINDS, MethodConfig, PolicyConfig, parse_method_config
from specpack.draft import Draft
from specpack.methods import method as method_spec
from specpack.protocols import NO_STOP, Budget, Feedback, Proposer, RequestView, StopRule
from specpack.proposers.policy.bandits import BANDITS, Bandit, RewardScale
from specpack.proposers.policy.cost_model import (AcceptanceCalibration, StepCostModel,
                                                  choose_draft_lengths, trim_to_goodput)
from specpack.proposers.policy.stopping import (ConfidenceRule, CumulativeRule, SVIPRule,
                                                truncate_by_rule)
from specpack.registry import check_policy


#: draft length under auto-off until the step-cost model has seen a few steps
WARMUP_LENGTH = 2


def make_rule(cfg: PolicyConfig, cap: int) -> StopRule:
    length = min(cfg.max_length, cap)
    if cfg.kind == "svip":
        return SVIPRule(max_length=length, gamma=cfg.svip_gamma, h=cfg.svip_h)
    if cfg.kind == "threshold":
        return ConfidenceRule(max_length=length, threshold=cfg.threshold)
    if cfg.kind == "cumulative":
        return CumulativeRule(max_length=length, threshold=cfg.cumulative_threshold)
    return NO_STOP


@dataclass
class _ReqState:
    ema_len: float = -1.0      # acceptance_ema
    succ: float = 0.0          # discounted accepted tokens
    fail: float = 0.0          # discounted rejections
    arm: int = -1              # arm used at the last step
    drafted: int = 0
    path_probs: np.ndarray | None = None   # scores along the verified path, last step
    bandit: Bandit | None = None


class PolicyProposer(Proposer):
    """A policy over one or more proposers, itself a proposer."""

    def __init__(self, cfg: PolicyConfig, base: MethodConfig, *, max_nodes: int,
                 build: Callable[[MethodConfig, int], Any], where: str = "specpack policy"):
        check_policy(cfg, base, max_nodes, where)
        self.cfg = cfg
        self.max_nodes = max_nodes
        self.config = base
        #: per-request policy states kept: the policy's cap and the method's
        self.max_tracked = min(cfg.max_tracked_requests, base.max_active_requests)
        # one proposer per distinct proposer config
        self.proposers: list[Proposer] = []
        #: per proposer: does it apply stop rules while drafting (draft distributions)?
        self.applies_rule: list[bool] = []
        keys: dict[str, int] = {}

        def proposer_for(mc: MethodConfig, nodes: int) -> int:
            k = json.dumps(mc.model_dump(), sort_keys=True)
            if k not in keys:
                keys[k] = len(self.proposers)
                self.proposers.append(build(mc, nodes))
                self.applies_rule.append(method_spec(mc.method).draft_distributions)
            return keys[k]

        if cfg.kind in BANDIT_KINDS:
            self.arms: list[tuple[int, int]] = []
            for i, arm in enumerate(cfg.arms):
                mc = base if arm.proposer is None else parse_method_config(
                    arm.proposer, where=f"{where}: arms[{i}].proposer")
                self.arms.append((proposer_for(mc, max_nodes), arm.num_tokens))
        else:
            n = cfg.num_tokens or max_nodes
            self.arms = [(proposer_for(base, max_nodes), min(n, max_nodes))]
        self.rule = make_rule(cfg, max_nodes)
        self._rng = np.random.default_rng(cfg.seed)
        self._global: Bandit | None = None
        if cfg.kind in BANDIT_KINDS and cfg.scope != "request":
            self._global = self._new_bandit(0)
        self._states: OrderedDict[Hashable, _ReqState] = OrderedDict()
        self.cost = StepCostModel()
        self._scale = RewardScale()
        self._succ_all = 1.0
        self._fail_all = 1.0
        self._step_arm = -1
        self.steps = 0
        self.spec_off_steps = 0
        self.arm_picks = np.zeros(len(self.arms), np.int64)   # request-steps per arm
        #: per proposer: P(node accepted | its draft score), learned from feedback
        self.calibration = [AcceptanceCalibration() for _ in self.proposers]
        self._calibrate = cfg.auto_off or (cfg.kind in BANDIT_KINDS and cfg.scope == "batch_quota")
        #: per-step decision trace (diagnosis; SPECPACK_POLICY_TRACE=1), bounded
        self.trace: deque[dict] | None = (deque(maxlen=20000) if os.environ.get(
            "SPECPACK_POLICY_TRACE", "0") not in ("", "0") else None)

    # ------------------------------------------------------------ helpers
    def _new_bandit(self, salt: int) -> Bandit:
        cls = BANDITS[self.cfg.kind]
        seed = self.cfg.seed * 1_000_003 + salt
        if self.cfg.kind == "ucb":
            return cls(len(self.arms), seed, c=self.cfg.ucb_c)
        if self.cfg.kind == "exp3":
            return cls(len(self.arms), seed, gamma=self.cfg.exp3_gamma, forget=self.cfg.exp3_forget)
        return cls(len(self.arms), seed)

    def _state(self, key: Hashable) -> _ReqState:
        st = self._states.get(key)
        if st is None:
            st = _ReqState()
            if self.cfg.kind in BANDIT_KINDS and self.cfg.scope == "request":
                st.bandit = self._new_bandit(len(self._states) + self.steps)
            self._states[key] = st
            while len(self._states) > self.max_tracked:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
        return st

    def alpha(self, key: Hashable) -> float:
        """Per-token acceptance estimate of a request (shrunk to the batch-wide rate)."""
        st = self._states.get(key)
        prior = self._succ_all / (self._succ_all + self._fail_all)
        if st is None:
            return prior
        m = 2.0
        return (st.succ + m * prior) / (st.succ + st.fail + m)

    def _cap(self, st: _ReqState, view: RequestView) -> tuple[int, int]:
        """(arm, length cap) for one request before the cost model."""
        kind = self.cfg.kind
        if kind in BANDIT_KINDS:
            if self.cfg.scope == "request":
                arm = st.bandit.select()
            elif self.cfg.scope == "global":
                arm = self._global.select()
            else:
                arm = self._step_arm
        else:
            arm = 0
        cap = self.arms[arm][1]
        if kind in ("svip", "threshold", "cumulative"):
            cap = min(self.cfg.max_length, self.max_nodes)
        elif kind == "acceptance_ema":
            cap = self.max_nodes if st.ema_len < 0 else int(math.ceil(st.ema_len)) + 1
            cap = max(1, min(cap, self.cfg.max_length, self.max_nodes))
        return arm, min(cap, view.budget.max_nodes)

    # ------------------------------------------------------------ Proposer
    def propose(self, batch: Sequence[RequestView], stop_rule: StopRule = NO_STOP) -> list[Draft]:
        """Drafts under the policy's budgets and its own stop rule
        (``stop_rule`` from a host is not used: the policy is the rule)."""
        if not batch:
            return []
        self.steps += 1
        if self.cfg.kind in BANDIT_KINDS and self.cfg.scope == "batch_quota":
            self._step_arm = self._global.select()
        states = [self._state(v.key) for v in batch]
        picks = [self._cap(st, v) for st, v in zip(states, batch)]
        caps = [c for _, c in picks]
        quota = self.cfg.scope == "batch_quota" and self.cfg.kind in BANDIT_KINDS
        trim = self.cfg.auto_off or quota
        # exploration: one request of the step keeps its whole draft, so the
        # step-cost fit keeps seeing longer drafts and the calibration keeps
        # seeing low-scored nodes, at the price of a few nodes, not a step
        spare = (int(self._rng.integers(len(batch)))
                 if trim and self._rng.random() < self.cfg.explore else -1)
        explore = spare >= 0
        if trim:
            # before drafting: only drafters that pay per depth (model passes) are
            # cut on the per-request acceptance estimate; the cheap ones draft to
            # their cap and are cut after drafting on their own node scores
            if any(self.applies_rule[self.arms[arm][0]] for arm, _ in picks):
                pre = choose_draft_lengths([self.alpha(v.key) for v in batch], caps, self.cost)
            else:
                pre = caps
            lengths = [n if self.applies_rule[self.arms[arm][0]] and i != spare else cap
                       for i, ((arm, cap), n) in enumerate(zip(picks, pre))]
            if not self.cost.ready:  # warm-up: short drafts until step costs are known
                lengths = [min(n, WARMUP_LENGTH) for n in lengths]
            elif not self._any_token_can_pay(len(batch)):
                # not even the best first-level node would pay for its
                # verification: draft nothing (drafting would be wasted), but
                # for the exploring request
                lengths = [n if i == spare else 0 for i, n in enumerate(lengths)]
        else:
            lengths = caps
        for arm, _ in picks:
            self.arm_picks[arm] += 1
        if self.trace is not None:
            self.trace.append({
                "step": self.steps, "batch": len(batch), "explore": bool(explore),
                "caps": int(sum(caps)), "lengths": [int(x) for x in lengths],
                "alpha": [round(self.alpha(v.key), 3) for v in batch],
                "coef": [float(x) for x in self.cost.coef], "ready": self.cost.ready,
                "pred_s": self.cost.predict(len(batch) + sum(lengths), max(lengths, default=0)),
                "arms": [int(a) for a, _ in picks]})
        drafts: list[Draft | None] = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for i, ((arm, _), n) in enumerate(zip(picks, lengths)):
            states[i].arm = arm
            if n <= 0:
                drafts[i] = Draft.empty()
                continue
            groups.setdefault(self.arms[arm][0], []).append(i)
        for p, rows in groups.items():
            proposer = self.proposers[p]
            views = [replace(batch[i], budget=Budget(lengths[i], min(lengths[i],
                                                                     batch[i].budget.max_depth)))
                     for i in rows]
            out = proposer.propose(views, stop_rule=self.rule)
            for i, d in zip(rows, out):
                if not self.applies_rule[p]:
                    d = truncate_by_rule(d, self.rule)
                drafts[i] = d.truncated(lengths[i], batch[i].budget.max_depth)
        if trim and self.cost.ready:
            trimmed = self._trim(drafts, [self.arms[a][0] for a, _ in picks], batch)
            drafts = [d if i == spare else t for i, (d, t) in enumerate(zip(drafts, trimmed))]
        if self.trace is not None:
            self.trace[-1]["kept"] = [len(d) for d in drafts]
        if caps and any(caps) and not any(len(d) for d in drafts):
            self.spec_off_steps += 1
        for st, d in zip(states, drafts):
            st.drafted = len(d)
            st.path_probs = (d.probs[d.best_path()] if self._calibrate and d.probs is not None
                             else None)
        return drafts  # type: ignore[return-value]

    def _any_token_can_pay(self, n: int) -> bool:
        """Could the best first-level node raise goodput at batch ``n``?
        (``v_max / b > n / (a + b n + c)``, ``v_max`` from the calibrations,
        slopes at the cost model's decision bounds)."""
        a, b, c = (float(x) for x in self.cost.decision_coef)
        vmax = max(cal.best_first_value() for cal in self.calibration)
        return b <= 0 or vmax * (a + b * n + c) > b * n

    def _trim(self, drafts: list[Draft], props: list[int],
              batch: Sequence[RequestView]) -> list[Draft]:
        """Keep the nodes whose calibrated value pays for their verification
        (:func:`~specpack.proposers.policy.cost_model.trim_to_goodput`)."""
        values = []
        for d, p, v in zip(drafts, props, batch):
            val = self.calibration[p].node_values(d)
            if val is None:  # no scores: the request's geometric estimate
                val = self.alpha(v.key) ** d.depths.astype(np.float64)
            values.append(val)
        depth = max((d.max_depth for d in drafts), default=0)
        keep = trim_to_goodput(values, self.cost, depth)
        out = []
        for d, val, k in zip(drafts, values, keep):
            if k >= len(d):
                out.append(d)
                continue
            top = sorted(range(len(d)), key=lambda i: (-val[i], i))[:k]
            mask = np.zeros(len(d), bool)
            mask[top] = True
            out.append(d.subset(mask))
        return out

    def observe(self, feedback: Sequence[Feedback]) -> None:
        if self.trace:
            self.trace[-1]["accepted"] = [int(f.accepted) for f in feedback]
        lam = 0.9
        ema = self.cfg.ema_decay
        paths: dict[int, tuple[list, list]] = {}   # proposer -> verified paths, accepted
        by_prop: dict[int, list[Feedback]] = {}
        batch = len(feedback)
        a, b, c = self.cost.coef
        depth = max((f.drafted for f in feedback), default=0)
        step_tokens = 0.0
        for f in feedback:
            st = self._states.get(f.key)
            acc = max(0, min(f.accepted, f.drafted))
            step_tokens += 1 + acc
            if f.drafted > 0:
                rejected = 1.0 if acc < f.drafted else 0.0
                if st is not None:
                    st.succ = lam * st.succ + acc
                    st.fail = lam * st.fail + rejected
                    if self._calibrate and st.path_probs is not None and st.arm >= 0:
                        ps, accs = paths.setdefault(self.arms[st.arm][0], ([], []))
                        ps.append(st.path_probs)
                        accs.append(acc)
                self._succ_all = 0.995 * self._succ_all + acc
                self._fail_all = 0.995 * self._fail_all + rejected
            if st is None:
                continue
            if self.cfg.kind == "acceptance_ema" and f.drafted > 0:
                target = acc + 1 if acc == f.drafted else acc
                st.ema_len = target if st.ema_len < 0 else ema * st.ema_len + (1 - ema) * target
            if st.arm >= 0:
                by_prop.setdefault(self.arms[st.arm][0], []).append(f)
                if self.cfg.kind in BANDIT_KINDS and self.cfg.scope != "batch_quota" \
                        and self.cost.ready:
                    share = (a + c * depth) / max(batch, 1) + b * (1 + f.drafted)
                    reward = self._scale((1 + acc) / max(share, 1e-9))
                    (st.bandit if self.cfg.scope == "request" else self._global).update(st.arm, reward)
        if self.cfg.kind in BANDIT_KINDS and self.cfg.scope == "batch_quota" \
                and self.cost.ready and self._step_arm >= 0:
            n_ver = batch + sum(f.drafted for f in feedback)
            t = self.cost.predict(n_ver, depth)
            self._global.update(self._step_arm, self._scale(step_tokens / max(t, 1e-9)))
        for p, (ps, acc) in paths.items():
            self.calibration[p].update_batch(ps, acc)
        for p, fb in by_prop.items():
            self.proposers[p].observe(fb)

    @property
    def wants_target_topk(self) -> bool:
        return any(p.wants_target_topk for p in self.proposers)

    def observe_target_topk(self, tokens, topk) -> None:
        for p in self.proposers:
            p.observe_target_topk(tokens, topk)

    def attach_target(self, model) -> None:
        for p in self.proposers:
            p.attach_target(model)

    def num_tracked(self) -> int:
        return max([len(self._states)] + [p.num_tracked() for p in self.proposers])

    def observe_step(self, num_tokens: int, max_depth: int, seconds: float) -> None:
        """Measured wall time of one engine step that verified ``num_tokens``.

        The depth term ``c D`` stands for sequential drafter passes; without a
        drafter that pays per depth it is left out of the fit (``D = 0``):
        on a chain-verifying engine at batch 1, ``N = 1 + D`` and a free depth
        term would take the per-token verification cost away from ``b``."""
        if not any(self.applies_rule):
            max_depth = 0
        if self.trace:
            last = self.trace[-1]
            last.update(measured_s=seconds, n=num_tokens, d=max_depth,
                        pred_before_s=self.cost.predict(num_tokens, max_depth))
        self.cost.observe(num_tokens, max_depth, seconds)

    def release(self, key: Hashable, finished: bool = True) -> None:
        self._states.pop(key, None)
        for p in self.proposers:
            p.release(key, finished)

    # ------------------------------------------------------------ reports
    def describe(self) -> dict:
        out = {"method": self.config.model_dump(), "kind": self.cfg.kind, "steps": self.steps,
               "spec_off_steps": self.spec_off_steps,
               "cost_coef": [float(x) for x in self.cost.coef],
               "arm_lengths": [n for _, n in self.arms],
               "arm_picks": self.arm_picks.tolist()}
        bandit = self._global
        if bandit is not None:
            out["arm_counts"] = bandit.counts.tolist()
            out["arm_means"] = [round(float(x), 4) for x in bandit.means]
        return out
