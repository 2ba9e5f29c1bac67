"""The draft tree every proposer returns (DESIGN.md §2).

A :class:`Draft` is one request's proposal in parent-pointer form. Node ``i``
holds ``tokens[i]``; ``parents[i]`` is the index of its parent node, or ``-1``
when its parent is the root (the last committed token, which is not stored).
Parents always precede children (``parents[i] < i``), so a single forward scan
computes depths and ancestor sets. A chain of length ``n`` is the tree with
``parents = [-1, 0, 1, ..., n-2]``.

Derived views used by verifiers:

* ``depths[i]`` = number of edges from the root, so first-level nodes have
  depth 1;
* ``positions(base)[i] = base + depths[i]``, the position id of node ``i``
  when the root sits at position ``base``;
* ``ancestor_mask()[i, j]`` is true iff ``j`` is ``i`` or an ancestor of
  ``i`` (the tree-attention mask over the draft block, SpecInfer §4);
* ``dists`` (optional, ``[n + 1, V]``): row 0 is the draft distribution the
  root's children were drawn from, row ``i + 1`` that of node ``i``'s
  children. When present, the children of a node are promised to be i.i.d.
  samples from that row, which lets the stochastic verifier use the
  ``min(1, p/q)`` rule; without it drafts are treated as deterministic.
* ``root_dist`` (optional, ``[V]``): the drafter's distribution over the
  first token after the root, for methods that combine drafters (RASD
  prunes retrieval branches with it). What one method needs from another
  travels in the draft, never in side attributes of the proposer.
* ``best_path()`` is the root-to-leaf path with the highest score: the sum of
  node probabilities along it when ``probs`` is known (expected number of
  accepted tokens under independent acceptance), otherwise its length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

_EMPTY_I32 = np.zeros(0, dtype=np.int32)


@njit(cache=True)
def _best_path(parents, weights):
    """Indices of the root-to-leaf path with the largest weight sum (first leaf on ties)."""
    n = parents.size
    score = np.empty(n, np.float64)
    has_child = np.zeros(n, np.bool_)
    for i in range(n):
        p = parents[i]
        score[i] = weights[i] + (score[p] if p >= 0 else 0.0)
        if p >= 0:
            has_child[p] = True
    best = -1
    for i in range(n):
        if not has_child[i] and (best < 0 or score[i] > score[best]):
            best = i
    depth = 0
    u = best
    while u >= 0:
        depth += 1
        u = parents[u]
    path = np.empty(depth, np.int32)
    u = best
    for j in range(depth - 1, -1, -1):
        path[j] = u
        u = parents[u]
    return path


@dataclass(frozen=True)
class Draft:
    """One request's draft tree (root = last committed token, not stored)."""

    tokens: np.ndarray
    parents: np.ndarray
    probs: np.ndarray | None = None
    dists: np.ndarray | None = None
    root_dist: np.ndarray | None = field(default=None, repr=False, compare=False)
    _depths: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = np.ascontiguousarray(self.tokens, dtype=np.int32).reshape(-1)
        parents = np.ascontiguousarray(self.parents, dtype=np.int32).reshape(-1)
        if tokens.shape != parents.shape:
            raise ValueError(
                f"Draft.tokens has {tokens.size} nodes but Draft.parents has {parents.size}"
            )
        n = tokens.size
        if n and (
            np.any(parents < -1) or np.any(parents >= np.arange(n, dtype=np.int32))
        ):
            raise ValueError(
                "Draft.parents must satisfy -1 <= parents[i] < i (parents before children); "
                f"got {parents.tolist()}"
            )
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "parents", parents)
        if self.probs is not None:
            probs = np.ascontiguousarray(self.probs, dtype=np.float32).reshape(-1)
            if probs.shape != tokens.shape:
                raise ValueError(
                    f"Draft.probs has {probs.size} entries for {n} nodes"
                )
            object.__setattr__(self, "probs", probs)
        if self.dists is not None:
            dists = np.asarray(self.dists, dtype=np.float32)
            if dists.ndim != 2 or dists.shape[0] != n + 1:
                raise ValueError(
                    f"Draft.dists must have shape [n_nodes + 1, vocab] = [{n + 1}, V], "
                    f"got {list(dists.shape)}"
                )
            object.__setattr__(self, "dists", dists)

    # ------------------------------------------------------------ builders
    @classmethod
    def trusted(cls, tokens: np.ndarray, parents: np.ndarray,
                probs: np.ndarray | None = None, dists: np.ndarray | None = None,
                root_dist: np.ndarray | None = None) -> "Draft":
        """Build without validation, for proposers whose kernels guarantee a
        valid tree: contiguous int32 ``tokens``/``parents`` with
        ``-1 <= parents[i] < i`` and float32 ``probs`` of the same length."""
        d = object.__new__(cls)
        object.__setattr__(d, "tokens", tokens)
        object.__setattr__(d, "parents", parents)
        object.__setattr__(d, "probs", probs)
        object.__setattr__(d, "dists", dists)
        object.__setattr__(d, "root_dist", root_dist)
        object.__setattr__(d, "_depths", None)
        return d

    @classmethod
    def empty(cls) -> "Draft":
        return cls(_EMPTY_I32, _EMPTY_I32)

    @classmethod
    def chain(cls, tokens, probs=None, dists=None) -> "Draft":
        tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
        return cls(tokens, np.arange(-1, tokens.size - 1, dtype=np.int32), probs, dists)

    # ------------------------------------------------------------ views
    def __len__(self) -> int:
        return int(self.tokens.size)

    @property
    def is_chain(self) -> bool:
        return bool(np.array_equal(self.parents, np.arange(-1, len(self) - 1)))

    @property
    def depths(self) -> np.ndarray:
        """Depth of each node; first-level nodes have depth 1."""
        if self._depths is None:
            d = np.empty(len(self), dtype=np.int32)
            for i, p in enumerate(self.parents.tolist()):
                d[i] = 1 if p < 0 else d[p] + 1
            object.__setattr__(self, "_depths", d)
        return self._depths  # type: ignore[return-value]

    @property
    def max_depth(self) -> int:
        return int(self.depths.max()) if len(self) else 0

    def positions(self, base: int) -> np.ndarray:
        """Position ids of the nodes when the root token sits at ``base``."""
        return self.depths.astype(np.int64) + int(base)

    def ancestor_mask(self) -> np.ndarray:
        """Bool ``[n, n]``: ``mask[i, j]`` iff ``j == i`` or ``j`` is an ancestor of ``i``."""
        n = len(self)
        mask = np.zeros((n, n), dtype=bool)
        for i, p in enumerate(self.parents.tolist()):
            if p >= 0:
                mask[i] = mask[p]
            mask[i, i] = True
        return mask

    def leaves(self) -> np.ndarray:
        """Indices of nodes without children."""
        has_child = np.zeros(len(self), dtype=bool)
        par = self.parents[self.parents >= 0]
        has_child[par] = True
        return np.flatnonzero(~has_child).astype(np.int32)

    def path_to(self, node: int) -> np.ndarray:
        """Node indices from the first level down to ``node`` (inclusive)."""
        path = []
        while node >= 0:
            path.append(node)
            node = int(self.parents[node])
        return np.asarray(path[::-1], dtype=np.int32)

    def best_path(self) -> np.ndarray:
        """Node indices of the best root-to-leaf path (see module docstring).

        Ties go to the earliest leaf, so proposers control the order by the
        order in which they emit siblings.
        """
        n = len(self)
        if n == 0:
            return _EMPTY_I32
        weights = self.probs if self.probs is not None else np.ones(n, np.float32)
        return _best_path(self.parents, weights)

    def best_path_tokens(self) -> np.ndarray:
        return self.tokens[self.best_path()]

    def truncated(self, max_nodes: int, max_depth: int | None = None) -> "Draft":
        """Keep nodes ``[0, max_nodes)`` whose depth is at most ``max_depth``.

        Dropping a node drops its subtree, so the result is a valid tree.
        """
        keep = np.arange(len(self)) < max_nodes
        if max_depth is not None:
            keep &= self.depths <= max_depth
        return self.subset(keep)

    def subset(self, keep: np.ndarray) -> "Draft":
        """The nodes where ``keep`` is true, minus those with a dropped
        ancestor (a dropped node drops its subtree); order, probabilities and
        distribution rows follow."""
        keep = np.array(keep, dtype=bool)
        n = len(self)
        for i, p in enumerate(self.parents.tolist()):
            if p >= 0 and not keep[p]:
                keep[i] = False
        if keep.all():
            return self
        idx = np.flatnonzero(keep)
        remap = np.full(n, -1, dtype=np.int32)
        remap[idx] = np.arange(idx.size, dtype=np.int32)
        par = self.parents[idx]
        new_par = np.where(par >= 0, remap[np.maximum(par, 0)], -1).astype(np.int32)
        probs = None if self.probs is None else self.probs[idx]
        dists = None if self.dists is None else self.dists[np.r_[0, idx + 1]]
        return Draft(self.tokens[idx], new_par, probs, dists, self.root_dist)
