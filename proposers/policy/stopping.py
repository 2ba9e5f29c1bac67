"""Per-position stopping rules for adaptive draft length.

A drafter asks the rule before it drafts the next token below a node: the
rule sees the draft distribution ``q`` it would draw that token from (or just
its summary statistics) and the path probability of the drafted prefix.

* **SVIP** (Zhang et al., 2024, "Draft Model Knows When to Stop",
  arXiv:2411.18462): stop when ``sqrt(gamma * H(q)) > h``, with ``H`` the
  entropy of ``q`` in nats (defaults ``gamma = 0.15``, ``h = 0.3``, i.e. stop
  when ``H > h**2 / gamma = 0.6`` nats). Needs the full distribution.
* **confidence threshold** (the "max-confidence" rule of e.g. Kim et al.'s
  BiLD / Medusa-style heuristics): stop when ``max(q) < t`` (default 0.4).
* **cumulative** (SpecDec++-style, Huang et al., 2024, arXiv:2405.19715,
  without its trained head): stop when the probability that *some* drafted
  token is rejected, estimated as ``1 - prod_i p_i`` with ``p_i`` the draft
  probability of each drafted token, exceeds ``t``; ``p_i`` are the drafter's
  own probabilities, so the rule needs no distribution rows.

All rules also stop at ``max_length``. Rules are stateless and cheap: the
statistics come from one pass over ``q``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from specpack.protocols import NO_STOP, StopRule


def entropy_nats(q) -> float:
    """Shannon entropy ``-sum q log q`` (nats) of a probability vector (0 log 0 = 0)."""
    if isinstance(q, torch.Tensor):
        q = q.detach().float()
        nz = q[q > 0]
        return float(-(nz * nz.log()).sum())
    q = np.asarray(q, dtype=np.float64)
    nz = q[q > 0]
    return float(-(nz * np.log(nz)).sum())


def top1(q) -> float:
    if isinstance(q, torch.Tensor):
        return float(q.max()) if q.numel() else 0.0
    q = np.asarray(q)
    return float(q.max()) if q.size else 0.0


@dataclass(frozen=True)
class SVIPRule(StopRule):
    gamma: float = 0.15
    h: float = 0.3
    needs_distribution = True

    def stop_before(self, depth: int, q=None, path_prob: float = 1.0) -> bool:
        if depth > self.max_length:
            return True
        if q is None:
            raise ValueError("SVIP needs the draft distribution")
        return math.sqrt(self.gamma * entropy_nats(q)) > self.h


@dataclass(frozen=True)
class ConfidenceRule(StopRule):
    threshold: float = 0.4
    needs_distribution = True

    def stop_before(self, depth: int, q=None, path_prob: float = 1.0) -> bool:
        if depth > self.max_length:
            return True
        if q is None:
            raise ValueError("the confidence rule needs the draft distribution")
        return top1(q) < self.threshold


@dataclass(frozen=True)
class CumulativeRule(StopRule):
    threshold: float = 0.6

    def stop_before(self, depth: int, q=None, path_prob: float = 1.0) -> bool:
        return depth > self.max_length or (1.0 - path_prob) > self.threshold

    def admits(self, path_prob: float) -> bool:
        return (1.0 - path_prob) <= self.threshold


def truncate_by_rule(draft, rule: StopRule):
    """Apply ``rule`` after the fact to a draft that carries ``probs``.

    For drafters without distribution rows (retrieval): a node is kept when
    its parent is kept, its depth is within ``max_length``, its path
    probability passes :meth:`StopRule.admits`, and - for rules that read
    ``q`` - the rule accepts the parent's empirical child distribution
    (children's conditional probabilities), the only ``q`` such drafters have.
    """
    n = len(draft)
    if n == 0 or rule is NO_STOP:
        return draft
    parents = draft.parents
    probs = draft.probs if draft.probs is not None else np.ones(n, np.float32)
    depths = draft.depths
    cond = np.empty(n, np.float64)
    for i in range(n):
        pp = probs[parents[i]] if parents[i] >= 0 else 1.0
        cond[i] = probs[i] / pp if pp > 0 else 0.0
    child_q: dict[int, list[float]] = {}
    if rule.needs_distribution:
        for i in range(n):
            child_q.setdefault(int(parents[i]), []).append(cond[i])
    keep = np.zeros(n, bool)
    for i in range(n):
        p = int(parents[i])
        if p >= 0 and not keep[p]:
            continue
        parent_prob = float(probs[p]) if p >= 0 else 1.0
        q = None
        if rule.needs_distribution:
            q = np.asarray(child_q[p], np.float64)
            s = q.sum()
            q = q / s if s > 0 else q
        if rule.stop_before(int(depths[i]), q, parent_prob):
            continue
        keep[i] = rule.admits(float(probs[i]))
    return draft.subset(keep)
