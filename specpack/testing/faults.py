"""Fault injection around any proposer, for tests and soak runs only.

Settings: ``"fault_injection": {"raise_rate": 0.01, "malformed_rate": 0.01,
"stall_rate": 0.0, "stall_s": 0.5, "hook_raise_rate": 0.0, "seed": 0}`` next
to ``"policy"`` in the specpack settings (:class:`specpack.config.FaultInjectionConfig`).
Per request and step, with the configured probabilities, :class:`FaultInjector`

* raises from ``propose`` (the whole batched call: the step driver then
  retries request by request, and only the faulty requests lose drafts);
* returns a malformed draft, cycling through the kinds an adapter must
  refuse: ids at or beyond the vocabulary (``2**30``), negative ids, more
  nodes than the budget, float token ids, and an object that is not a
  :class:`~specpack.draft.Draft`;
* stalls (``time.sleep(stall_s)``) before drafting;
* raises from ``observe`` / ``release`` / ``observe_step``.

Every injection is counted in :attr:`FaultInjector.injected` (by kind) and
reported by ``describe()``, so a soak run can check that the faults it
caused were absorbed. Everything else is forwarded to the wrapped proposer.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Sequence

import numpy as np

from specpack.config import FaultInjectionConfig
from specpack.draft import Draft
from specpack.protocols import NO_STOP, Proposer, RequestView, StopRule

MALFORMED_KINDS = ("beyond_vocab", "negative", "over_budget", "float_ids", "not_a_draft")


class InjectedFault(RuntimeError):
    """Raised on purpose by :class:`FaultInjector`."""


class _FloatDraft:
    """Quacks like a Draft but carries float token ids (a wrong dtype)."""

    def __init__(self, n: int):
        self.tokens = np.arange(n, dtype=np.float32) + 0.5
        self.parents = np.arange(-1, n - 1, dtype=np.int32)
        self.probs = None


class FaultInjector(Proposer):
    """Wraps ``inner``; injects the faults of ``cfg`` (see module docstring)."""

    def __init__(self, inner: Proposer, cfg: FaultInjectionConfig, *, max_nodes: int):
        self.inner = inner
        self.cfg = cfg
        self.config = inner.config
        self.max_nodes = max_nodes
        self.rng = np.random.default_rng(cfg.seed)
        self.injected: Counter = Counter()
        self._kind = 0

    def _hit(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def _malformed(self, view: RequestView) -> Any:
        kind = MALFORMED_KINDS[self._kind % len(MALFORMED_KINDS)]
        self._kind += 1
        self.injected[f"malformed:{kind}"] += 1
        n = max(1, view.budget.max_nodes)
        if kind == "beyond_vocab":
            return Draft.chain(np.full(n, 1 << 30, np.int32))
        if kind == "negative":
            return Draft.trusted(np.full(n, -7, np.int32), np.arange(-1, n - 1, dtype=np.int32))
        if kind == "over_budget":
            return Draft.chain(np.arange(n + 5, dtype=np.int32))
        if kind == "float_ids":
            return _FloatDraft(n)
        return [1, 2, 3]

    def propose(self, batch: Sequence[RequestView], stop_rule: StopRule = NO_STOP) -> list:
        if any(self._hit(self.cfg.stall_rate) for _ in batch):
            self.injected["stall"] += 1
            time.sleep(self.cfg.stall_s)
        for _ in batch:
            if self._hit(self.cfg.raise_rate):
                self.injected["raise"] += 1
                raise InjectedFault("injected proposer fault (fault_injection.raise_rate)")
        out = list(self.inner.propose(batch, stop_rule=stop_rule))
        return [self._malformed(v) if self._hit(self.cfg.malformed_rate) else d
                for v, d in zip(batch, out)]

    def _hook(self, name: str) -> None:
        if self._hit(self.cfg.hook_raise_rate):
            self.injected[f"raise:{name}"] += 1
            raise InjectedFault(f"injected fault in {name}")

    def observe(self, feedback) -> None:
        self._hook("observe")
        self.inner.observe(feedback)

    def release(self, key, finished: bool = True) -> None:
        self._hook("release")
        self.inner.release(key, finished)

    def observe_step(self, num_tokens: int, max_depth: int, seconds: float) -> None:
        self._hook("observe_step")
        self.inner.observe_step(num_tokens, max_depth, seconds)

    @property
    def wants_target_topk(self) -> bool:
        return self.inner.wants_target_topk

    def observe_target_topk(self, tokens, topk) -> None:
        self.inner.observe_target_topk(tokens, topk)

    def attach_target(self, model) -> None:
        self.inner.attach_target(model)

    def num_tracked(self) -> int:
        return self.inner.num_tracked()

    def describe(self) -> dict:
        return {**self.inner.describe(), "fault_injection": dict(self.injected)}
