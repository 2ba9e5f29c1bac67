"""The proposer and policy contract (DESIGN.md §2), engine-agnostic.

Engines adapt their own batch layout to :class:`RequestView` rows; a proposer
sees only stable request keys and token contexts, never engine types.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
from typing import Callable, Hashable, Protocol, Sequence, runtime_checkable

import numpy as np

from specpack.draft import Draft


@dataclass(frozen=True)
class Budget:
    """How much a proposer may draft for one request at one step."""

    max_nodes: int
    max_depth: int

    def __post_init__(self) -> None:
        if self.max_nodes < 0 or self.max_depth < 0:
            raise ValueError(f"Budget must be non-negative, got {self}")


@dataclass
class RequestView:
    """What a proposer may read about one request at one step.

    ``context`` is prompt + output so far (ends with the last committed
    token), usually a view into engine memory: read it, never keep it.
    ``num_prompt_tokens`` is the prompt length when the engine knows it, else
    ``-1``. ``accepted`` is the number of draft tokens accepted at the previous
    step (``-1`` at the first step of a request). ``temperature``/``top_p`` are
    the request's sampling settings (0 = greedy), for drafters that sample.
    """

    key: Hashable
    context: np.ndarray
    budget: Budget
    accepted: int = -1
    num_prompt_tokens: int = -1
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass(frozen=True)
class Feedback:
    """Verification outcome for one request at one step."""

    key: Hashable
    drafted: int
    accepted: int


@runtime_checkable
class Proposer(Protocol):
    """Drafts token trees for a batch of requests.

    Implementations own their per-request state (keyed by ``RequestView.key``),
    update it incrementally from each view's context, and bound its memory.
    """

    def propose(self, batch: Sequence[RequestView]) -> list[Draft]: ...

    def observe(self, feedback: Sequence[Feedback]) -> None: ...

    def release(self, key: Hashable, finished: bool = True) -> None:
        """Drop a request's state. ``finished=False`` means preempted or
        unknown: the request may come back and must not be treated as a
        completed output."""
        ...


@runtime_checkable
class Policy(Protocol):
    """Decides how much to speculate per request and step (wraps a proposer)."""

    def budgets(self, batch: Sequence[RequestView]) -> list[Budget]: ...

    def observe(self, feedback: Sequence[Feedback]) -> None: ...

    def release(self, key: Hashable, finished: bool = True) -> None: ...


def propose_isolated(proposer, views: Sequence[RequestView],
                     on_error: Callable[[RequestView], None]) -> list[Draft | None]:
    """``proposer.propose(views)``, so that one bad request cannot cost the
    others their drafts: when the batched call raises, each view is retried
    alone; a view that fails again gets ``None`` and ``on_error(view)`` is
    called while its exception is being handled (engine adapters log it and
    release the request's state)."""
    try:
        return list(proposer.propose(views))
    except Exception:
        logging.getLogger(__name__).debug("batched propose failed; retrying per request",
                                          exc_info=True)
    out: list[Draft | None] = []
    for v in views:
        try:
            out.append(proposer.propose([v])[0])
        except Exception:
            on_error(v)
            out.append(None)
    return out


def as_context(tokens) -> np.ndarray:
    """Contiguous int32 view/copy of a token sequence."""
    return np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
