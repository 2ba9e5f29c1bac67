"""The step protocol every engine host shares (vLLM, SGLang, reference runtime).

One speculative step of a host, whatever the engine::

    driver.observe(zip(keys, accepted))     # outcome of the previous step
    drafts = driver.propose(views)          # budgets trimmed, faults isolated
    ... the engine verifies drafts ...
    driver.release(key, finished)           # a request left

:class:`StepDriver` owns what is the same in every host:

* **fault isolation** - a proposer exception never reaches the engine. When
  a batched ``propose`` raises, each request is retried alone; a request
  that fails again gets an empty draft (plain decoding for that step) and
  its proposer state is released (``finished=False``), so it is rebuilt
  from its context next step. ``observe``/``release``/``observe_step``/
  ``observe_target_topk`` failures are counted the same way. The first
  failure is logged with its traceback, later ones are only counted
  (:attr:`StepDriver.errors`). ``raise_errors=True`` (the reference
  runtime's tests) re-raises instead;
* **budgets** - a view whose budget is 0 is not asked at all; every draft is
  trimmed to its view's ``Budget(max_nodes, max_depth)``;
* **malformed drafts** - a draft that is not a :class:`~specpack.draft.Draft`,
  has non-integer token ids, ids outside ``[0, vocab_size)`` or broken
  parent pointers is dropped for that request (it decodes plainly this
  step), counted in :attr:`StepDriver.malformed` and logged once; it never
  reaches the engine;
* **feedback** - accepted counts become
  :class:`~specpack.protocols.Feedback` with the drafted count of the
  previous step and ``0 <= accepted <= drafted``; requests that were not in
  the previous step get no feedback;
* **step timing** - the interval between two ``propose`` calls is one engine
  step; with ``timed=True`` (no prefill in the step that just ran) it is
  reported as ``observe_step(N, D, seconds)`` with ``N`` the tokens the
  previous step verified (one per row plus its draft nodes) and ``D`` its
  deepest draft, for the policy layer's cost model.

A host keeps only what is its own: vLLM maps batch rows to requests and
hands chains over; SGLang lays trees out for its verifier; the reference
runtime verifies and commits KV.

Every driver also counts what was decided (:meth:`StepDriver.stats`: steps,
request-steps, drafted nodes, steps where nothing was drafted although the
budget allowed it) and the live drivers of a process are listed by
:func:`live_drivers`, so an in-process benchmark can report the decisions
of any method next to the engine's own counters.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np

from specpack.draft import Draft
from specpack.protocols import Feedback, Proposer, RequestView


def propose_isolated(proposer: Proposer, views: Sequence[RequestView],
                     on_error: Callable[[RequestView], None]) -> list[Draft | None]:
    """``proposer.propose(views)``, so that one bad request cannot cost the
    others their drafts: when the batched call raises, each view is retried
    alone; a view that fails again gets ``None`` and ``on_error(view)`` is
    called while its exception is being handled."""
    try:
        out = list(proposer.propose(views))
        if len(out) != len(views):
            raise ValueError(f"propose returned {len(out)} drafts for {len(views)} requests")
        return out
    except Exception:
        logging.getLogger(__name__).debug("batched propose failed; retrying per request",
                                          exc_info=True)
    out: list[Draft | None] = []
    for v in views:
        try:
            (d,) = proposer.propose([v])
            out.append(d)
        except Exception:
            on_error(v)
            out.append(None)
    return out


_LIVE: "weakref.WeakSet[StepDriver]" = weakref.WeakSet()


def live_drivers() -> list["StepDriver"]:
    """The step drivers alive in this process (oldest first)."""
    return sorted(_LIVE, key=lambda d: d._serial)


class StepDriver:
    """Drives one proposer through an engine's steps (see module docstring)."""

    _count = 0

    def __init__(self, proposer: Proposer, *, name: str, logger: logging.Logger,
                 raise_errors: bool = False, vocab_size: int | None = None):
        if not isinstance(proposer, Proposer):
            raise TypeError(f"{type(proposer).__name__} does not subclass "
                            "specpack.protocols.Proposer")
        self.proposer = proposer
        self.name = name
        self.logger = logger
        self.raise_errors = raise_errors
        self.vocab_size = vocab_size
        self.errors = 0
        self.malformed = 0
        self._drafted: dict[Hashable, int] = {}    # drafted nodes per key, last step
        self._prev: tuple[int, int, float] | None = None
        # decisions: steps, request-steps, drafted nodes, steps with budget but no draft
        self._counts = {"steps": 0, "request_steps": 0, "drafted": 0, "off_steps": 0}
        StepDriver._count += 1
        self._serial = StepDriver._count
        _LIVE.add(self)

    # ------------------------------------------------------------ errors
    def failed(self, where: str) -> None:
        """Count a proposer failure (call inside ``except``); log the first."""
        if self.raise_errors:
            raise
        self.errors += 1
        if self.errors == 1:
            self.logger.exception(
                "specpack: %s proposer failed in %s; the affected requests get no drafts "
                "(output stays correct). Further failures are counted, not logged.",
                self.name, where)

    def _guarded(self, where: str, fn: Callable, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self.failed(where)

    # ------------------------------------------------------------ the step
    def drafted(self, key: Hashable) -> int | None:
        """Nodes drafted for ``key`` at the last step (None: not in it)."""
        return self._drafted.get(key)

    def observe(self, accepted: Iterable[tuple[Hashable, int]]) -> list[Feedback]:
        """Report ``(key, accepted draft tokens)`` of the last step; returns the
        feedback passed on (keys not drafted for at the last step are skipped)."""
        fb = []
        for key, acc in accepted:
            d = self._drafted.get(key)
            if d is not None:
                fb.append(Feedback(key, d, max(0, min(int(acc), d))))
        if fb:
            self._guarded("observe", self.proposer.observe, fb)
        return fb

    def propose(self, views: Sequence[RequestView], *, timed: bool = True,
                other_rows: int = 0, now: float | None = None) -> list[Draft]:
        """Drafts for ``views`` (one per view, trimmed to its budget).

        ``timed``: the step that just ran was a steady decode step, so the time
        since the previous call is reported to the proposer's cost model.
        ``other_rows``: batch rows verified without a view (prefill chunks),
        counted in the step's verified tokens.
        """
        now = time.perf_counter() if now is None else now
        prev = self._prev
        if timed and prev is not None:
            self._guarded("observe_step", self.proposer.observe_step, prev[0], prev[1],
                          now - prev[2])
        drafts: list[Draft] = [Draft.empty()] * len(views)
        asked = [i for i, v in enumerate(views)
                 if v.budget.max_nodes > 0 and v.budget.max_depth > 0]
        if asked:
            def failed(v: RequestView) -> None:
                self.failed(f"propose (request {v.key!r})")
                self._guarded("release", self.proposer.release, v.key, False)

            out = propose_isolated(self.proposer, [views[i] for i in asked], failed)
            all_ok = self._batch_well_formed(out)
            for i, d in zip(asked, out):
                if d is None:
                    continue
                why = None if all_ok else self.malformed_reason(d)
                if why is not None:
                    self._dropped(views[i].key, why)
                    continue
                b = views[i].budget
                try:
                    drafts[i] = d.truncated(b.max_nodes, b.max_depth)
                except Exception:
                    self.failed(f"draft of request {views[i].key!r}")
        self._drafted = {v.key: len(d) for v, d in zip(views, drafts)}
        if views:
            n = sum(len(d) for d in drafts)
            c = self._counts
            c["steps"] += 1
            c["request_steps"] += len(views)
            c["drafted"] += n
            c["off_steps"] += int(n == 0 and bool(asked))
        self._prev = (len(views) + other_rows + sum(len(d) for d in drafts),
                      max((d.max_depth for d in drafts), default=0), now)
        return drafts

    def _batch_well_formed(self, out: Sequence[Any]) -> bool:
        """The checks of :meth:`malformed_reason` for a whole batch at once
        (the common case, on the hot path); False sends every draft of the
        batch through the per-draft checks, which say which one and why."""
        ds = [d for d in out if d is not None]
        if not ds or not all(isinstance(d, Draft) for d in ds):
            return not ds
        sizes = [np.size(d.tokens) for d in ds]
        if sizes != [np.size(d.parents) for d in ds]:
            return False
        try:
            tokens = np.concatenate([np.ravel(d.tokens) for d in ds])
            parents = np.concatenate([np.ravel(d.parents) for d in ds])
        except (TypeError, ValueError):
            return False
        if tokens.size == 0:
            return True
        if tokens.dtype.kind not in "iu" or any(np.ndim(d.tokens) != 1 for d in ds):
            return False
        if tokens.min() < 0 or (self.vocab_size is not None and tokens.max() >= self.vocab_size):
            return False
        local = np.arange(tokens.size) - np.repeat(np.cumsum([0] + sizes[:-1]), sizes)
        return bool((parents >= -1).all() and (parents < local).all())

    def malformed_reason(self, d: Any) -> str | None:
        """Why ``d`` cannot go to an engine, or None when it can."""
        if not isinstance(d, Draft):
            return f"not a Draft ({type(d).__name__})"
        tokens, parents = np.asarray(d.tokens), np.asarray(d.parents)
        if tokens.ndim != 1 or parents.shape != tokens.shape:
            return "tokens/parents shapes differ"
        if tokens.size == 0:
            return None
        if not np.issubdtype(tokens.dtype, np.integer):
            return f"token ids of dtype {tokens.dtype}"
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or (self.vocab_size is not None and hi >= self.vocab_size):
            return (f"token ids outside [0, {self.vocab_size or 'inf'}): min {lo}, max {hi}")
        if np.any(parents < -1) or np.any(parents >= np.arange(parents.size)):
            return "parent pointers not parents-first"
        return None

    def _dropped(self, key: Hashable, why: str) -> None:
        if self.raise_errors:
            raise ValueError(f"malformed draft for request {key!r}: {why}")
        self.malformed += 1
        if self.malformed == 1:
            self.logger.error("specpack: %s proposer returned a malformed draft (%s) for request "
                              "%r; dropped (that request decodes without drafts this step). "
                              "Further ones are counted, not logged.", self.name, why, key)

    def untimed(self) -> None:
        """The next step's interval is not a decode step (e.g. a prefill ran)."""
        self._prev = None

    # ------------------------------------------------------------ lifecycle
    def release(self, key: Hashable, finished: bool) -> None:
        self._drafted.pop(key, None)
        self._guarded("release", self.proposer.release, key, finished)

    def observe_target_topk(self, tokens, topk) -> None:
        self._guarded("observe_target_topk", self.proposer.observe_target_topk, tokens, topk)

    def attach_target(self, model: Any) -> None:
        """Hand the target model to the proposer (start-up: errors propagate)."""
        self.proposer.attach_target(model)

    def describe(self) -> dict:
        try:
            return self.proposer.describe()
        except Exception:
            self.failed("describe")
            return {}

    def stats(self) -> dict:
        """Counters of what was decided so far (cumulative), plus the proposer's
        own report (a policy adds its arm picks): ``mean_draft_len`` = drafted
        nodes per request-step, ``off_share`` = steps that drafted nothing
        although some request had a budget."""
        c = dict(self._counts, errors=self.errors, malformed=self.malformed, name=self.name)
        c["mean_draft_len"] = c["drafted"] / c["request_steps"] if c["request_steps"] else 0.0
        c["off_share"] = c["off_steps"] / c["steps"] if c["steps"] else 0.0
        c["proposer"] = self.describe()
        return c
