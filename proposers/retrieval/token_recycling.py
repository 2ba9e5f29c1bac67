"""Token Recycling (Luo et al., 2024, "Turning Trash into Treasure",
arXiv:2408.08696).

An adjacency table ``succ[t, :k]`` holds, for every token ``t``, ``k``
candidate next tokens, most recent / most likely first. It is updated

* from the target's top-k at each verified position, where the engine
  exposes them (:meth:`TokenRecyclingProposer.observe_target_topk`; the
  reference runtime does): ``succ[x_i] = topk(p(. | ..., x_i))``, the
  candidates the target itself considered after ``x_i`` - the "trash" of
  verification, recycled;
* otherwise from committed tokens: for each new bigram ``(a, b)``, ``b``
  moves to the front of ``succ[a]`` (most-recently-used order).

Drafting expands a fixed tree template breadth-first from the last committed
token: a template node is a path of candidate ranks ``(r_1, ..., r_d)``; its
token is ``succ[token(parent), r_d]``. The template holds the
``template_nodes`` paths with the largest ``prod 0.8 / (1 + r_j)`` (a
Zipf-like prior on rank, discounted per level), depth at most
``template_depth``, ordered best first, so a smaller node budget keeps the
best part of the template; nodes whose candidate slot is empty are dropped
with their subtree. Node probability is that prior, so ``Draft.best_path``
follows rank-0 candidates.

The table is shared by all requests (it is a property of the language, not
of a request), bounded by ``vocab_size x k x 4`` bytes (32K x 8 -> 1 MB),
and can be saved/loaded (``.npy``).
"""

from __future__ import annotations

import heapq
import logging
import os
from typing import Hashable, Sequence

import numpy as np

from specpack.config import TokenRecyclingConfig
from specpack.draft import Draft
from specpack.protocols import NO_STOP, Proposer, RequestView, StopRule

logger = logging.getLogger(__name__)


def build_template(num_nodes: int, depth: int, k: int):
    """(parents, ranks, prior) of the static template, parents first."""
    if num_nodes <= 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float64)
    decay = 0.8
    heap = [(-decay / (1 + r), 1, (r,)) for r in range(k)]
    heapq.heapify(heap)
    chosen: list[tuple[int, ...]] = []
    scores: dict[tuple[int, ...], float] = {}
    while heap and len(chosen) < num_nodes:
        neg, d, path = heapq.heappop(heap)
        chosen.append(path)
        scores[path] = -neg
        if d < depth:
            for r in range(k):
                heapq.heappush(heap, (neg * decay / (1 + r), d + 1, path + (r,)))
    chosen.sort(key=lambda p: (-scores[p], len(p), p))   # parents score higher: come first
    index = {p: i for i, p in enumerate(chosen)}
    parents = np.array([index[p[:-1]] if len(p) > 1 else -1 for p in chosen], np.int32)
    ranks = np.array([p[-1] for p in chosen], np.int32)
    prior = np.array([scores[p] for p in chosen], np.float64)
    return parents, ranks, prior


class TokenRecyclingProposer(Proposer):
    """Successor table + static template; see the module docstring."""

    def __init__(self, config: TokenRecyclingConfig | None = None, *, max_nodes: int = 80):
        self.config = config or TokenRecyclingConfig()
        c = self.config
        self.k = c.top_k
        self.max_nodes = max_nodes
        self.table = np.full((0, self.k), -1, np.int32)
        self._seen: dict[Hashable, int] = {}     # tokens of a request already learned from
        self._tpl = build_template(c.template_nodes, c.template_depth, self.k)
        self.topk_updates = 0
        if c.table_path and os.path.exists(c.table_path):
            self.load(c.table_path)

    # ------------------------------------------------------------ table
    def _grow(self, max_id: int) -> bool:
        if max_id >= self.config.vocab_size:
            return False
        if max_id >= self.table.shape[0]:
            new = max(max_id + 1, 2 * self.table.shape[0], 1024)
            new = min(new, self.config.vocab_size)
            t = np.full((new, self.k), -1, np.int32)
            t[: self.table.shape[0]] = self.table
            self.table = t
        return True

    def learn_bigrams(self, tokens: np.ndarray) -> None:
        """MRU update from consecutive committed tokens (ids outside
        ``[0, vocab_size)`` are skipped with the pairs they belong to)."""
        tokens = np.asarray(tokens, np.int64)
        if tokens.size < 2:
            return
        a, b = tokens[:-1], tokens[1:]
        cap = self.config.vocab_size
        ok = (a >= 0) & (a < cap) & (b >= 0) & (b < cap)
        if not ok.any():
            return
        self._grow(int(max(a[ok].max(), b[ok].max())))
        table = self.table
        for x, y in zip(a[ok].tolist(), b[ok].tolist()):
            row = table[x]
            hit = np.flatnonzero(row == y)
            j = int(hit[0]) if hit.size else self.k - 1
            row[1: j + 1] = row[:j].copy()
            row[0] = y

    wants_target_topk = True

    def observe_target_topk(self, tokens: np.ndarray, topk: np.ndarray) -> None:
        """``topk[i]`` = the target's top candidates after ``tokens[i]``."""
        tokens = np.asarray(tokens, np.int64)
        topk = np.asarray(topk, np.int64)[:, : self.k]
        if tokens.size == 0:
            return
        ok = (tokens >= 0) & (tokens < self.config.vocab_size)
        if not ok.any():
            return
        self._grow(int(max(tokens[ok].max(), 0)))
        w = topk.shape[1]
        self.table[tokens[ok], :w] = topk[ok]
        self.topk_updates += int(ok.sum())

    def save(self, path: str) -> None:
        with open(path, "wb") as f:
            np.save(f, self.table)

    def load(self, path: str) -> None:
        t = np.load(path)
        if t.ndim != 2 or t.dtype != np.int32:
            raise ValueError(f"{path}: not a token-recycling table (int32 [vocab, k])")
        if t.shape[1] != self.k:
            raise ValueError(f"{path}: table has top_k = {t.shape[1]}, config top_k = {self.k}")
        self.table = t[: self.config.vocab_size].copy()

    @property
    def nbytes(self) -> int:
        return int(self.table.nbytes)

    # ------------------------------------------------------------ Proposer
    def release(self, key: Hashable, finished: bool = True) -> None:
        self._seen.pop(key, None)

    def num_tracked(self) -> int:
        return len(self._seen)

    def observe_context(self, view: RequestView) -> None:
        """Learn from the request's committed tokens unless target top-k
        updates are arriving (they are the better signal); idempotent per step."""
        if self.topk_updates and view.accepted >= 0:
            self._seen[view.key] = int(view.context.size)
            return
        self._learn(view)

    def _learn(self, view: RequestView) -> None:
        ctx = view.context
        done = self._seen.get(view.key, 0)
        if done > ctx.size:
            done = 0
        start = max(done - 1, 0)
        self.learn_bigrams(ctx[start:])
        self._seen[view.key] = int(ctx.size)
        while len(self._seen) > self.config.max_active_requests:
            self._seen.pop(next(iter(self._seen)))

    def propose(self, batch: Sequence[RequestView], stop_rule: StopRule = NO_STOP) -> list[Draft]:
        out = []
        for v in batch:
            self.observe_context(v)
            out.append(self.draft_from(int(v.context[-1]) if v.context.size else -1,
                                       min(v.budget.max_nodes, self.max_nodes),
                                       v.budget.max_depth))
        return out

    def draft_from(self, last: int, max_nodes: int, max_depth: int) -> Draft:
        parents, ranks, prior = self._tpl
        n = parents.size
        if last < 0 or last >= self.table.shape[0] or max_nodes <= 0 or n == 0:
            return Draft.empty()
        toks = np.full(n, -1, np.int64)
        depth = np.zeros(n, np.int64)
        keep = []
        for i in range(n):
            p = parents[i]
            if p >= 0:
                if toks[p] < 0:
                    continue
                src = int(toks[p])
                depth[i] = depth[p] + 1
            else:
                src = last
                depth[i] = 1
            if depth[i] > max_depth or src >= self.table.shape[0]:
                continue
            t = self.table[src, ranks[i]]
            if t < 0:
                continue
            toks[i] = t
            keep.append(i)
            if len(keep) == max_nodes:
                break
        if not keep:
            return Draft.empty()
        idx = np.array(keep)
        remap = -np.ones(n, np.int64)
        remap[idx] = np.arange(idx.size)
        par = np.where(parents[idx] >= 0, remap[np.maximum(parents[idx], 0)], -1)
        return Draft(toks[idx].astype(np.int32), par.astype(np.int32),
                     prior[idx].astype(np.float32))
