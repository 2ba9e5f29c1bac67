"""The proposer contract (DESIGN.md §2), engine-agnostic.

Engines adapt their own batch layout to :class:`RequestView` rows; a proposer
sees only stable request keys and token contexts, never engine types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Hashable, Sequence

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


@dataclass(frozen=True)
class StopRule:
    """A per-position stopping rule for adaptive draft length; this base is
    the null rule (never stops before ``max_length``).

    A drafter asks :meth:`stop_before` before it drafts a token at ``depth``
    (1-based) from distribution ``q`` below a prefix of path probability
    ``path_prob``, and keeps a drafted node only when :meth:`admits` its
    path probability. Concrete rules (SVIP, confidence, cumulative) live in
    :mod:`specpack.proposers.policy.stopping`.
    """

    max_length: int = 1 << 30
    #: whether :meth:`stop_before` reads ``q`` (SVIP, confidence) or not
    needs_distribution: ClassVar[bool] = False

    def stop_before(self, depth: int, q=None, path_prob: float = 1.0) -> bool:
        return depth > self.max_length

    def admits(self, path_prob: float) -> bool:
        return True


#: The null stop rule: proposers take ``stop_rule=NO_STOP`` by default.
NO_STOP = StopRule()


class Proposer:
    """Base class of every specpack proposer (DESIGN.md §2).

    ``propose`` is the one method a proposer must write. Everything else is
    an optional capability with a do-nothing default, so hosts call it
    unconditionally (never ``hasattr``):

    * :meth:`observe` - accepted counts of the last verified step;
    * :meth:`release` - a request left (``finished=False``: preempted or
      unknown, it may come back and is not a completed output);
    * :meth:`observe_step` - measured wall time of one engine step (the cost
      model of the policy layer);
    * :meth:`observe_target_topk` - the target's top-k at each verified
      position, where the host can see logits (reference runtime), sent
      only when :attr:`wants_target_topk` says so (it costs a top-k per
      request per step);
    * :meth:`attach_target` - the target model, for drafters that run on it
      (self-speculation); vLLM hands it over in ``load_model``;
    * ``stop_rule`` in :meth:`propose` - drafters with draft distributions
      apply it while drafting; the others ignore it (the policy layer then
      applies it after the fact on node probabilities);
    * :meth:`num_tracked` - per-request states held now, which
      ``max_active_requests`` caps (memory bound, tested for every method);
    * :meth:`describe` - what hosts log at start-up.

    Proposers own their per-request state (keyed by ``RequestView.key``),
    update it incrementally from each view's context, and bound its memory.
    Build them with :meth:`from_config` (the method table's factory).
    """

    #: the validated method config (None for proposers built by hand in tests)
    config: Any = None

    @classmethod
    def from_config(cls, config, *, max_nodes: int):
        return cls(config, max_nodes=max_nodes)

    def propose(self, batch: Sequence[RequestView], stop_rule: StopRule = NO_STOP) -> list[Draft]:
        raise NotImplementedError(f"{type(self).__name__}.propose")

    def observe(self, feedback: Sequence[Feedback]) -> None:
        """Acceptance of the last step (default: not used)."""

    def release(self, key: Hashable, finished: bool = True) -> None:
        """Drop a request's state (default: none kept)."""

    def observe_step(self, num_tokens: int, max_depth: int, seconds: float) -> None:
        """One engine step verified ``num_tokens`` tokens, drafts at most
        ``max_depth`` deep, in ``seconds`` (default: not used)."""

    @property
    def wants_target_topk(self) -> bool:
        """Does :meth:`observe_target_topk` use what it is given? (default: no)"""
        return False

    def observe_target_topk(self, tokens: np.ndarray, topk: np.ndarray) -> None:
        """``topk[i]`` = the target's top-k ids after ``tokens[i]`` (default: not used)."""

    def attach_target(self, model: Any) -> None:
        """The target model the engine runs (default: not used)."""

    def num_tracked(self) -> int:
        """Per-request states held now (default: stateless)."""
        return 0

    def describe(self) -> dict:
        """Settings and counters for logs and reports."""
        cfg = self.config
        return {} if cfg is None else cfg.model_dump()
