"""Tree builders: which drafted nodes a model drafter expands, with how many children.

Drafting = the drafting engine (:mod:`specpack.proposers.model.engine`, the
forwards and the KV) + a builder (this module, the shape). Level by level,
the drafter hands a builder the drafter's distribution ``q`` at every
frontier node (``tree.rows[u]``, ``u = -1`` the root); the builder adds the
next level's nodes to the :class:`DraftTree` and returns the nodes whose
``q`` the engine must compute next (the next frontier; empty = stop).

A node's score is its path probability under the drafter,
``p(v) = p(parent) * q_parent[token_v]`` (``p(root) = 1``). Builders here:

* :class:`ChainBuilder` — one child per level: ``argmax q`` (greedy
  requests) or one sample from ``q`` (sampling requests);
* :class:`TopKTreeBuilder` — SpecInfer-style static top-k tree (Miao et al.,
  2024, arXiv:2305.09781): the ``width`` most likely children of each
  frontier node, the ``room`` best by ``p`` kept, the ``max_expand`` best
  of the level expanded next;
* :class:`SampledTreeBuilder` — ``width`` i.i.d. children drawn from ``q``
  per expanded node (kept or dropped together so the exact multi-draft
  acceptance rule applies; ``q`` of every node is exported in
  ``Draft.dists``).

Every builder asks the stop rule (:class:`~specpack.protocols.StopRule`:
SVIP, confidence, cumulative, adaptive length) before drafting from a
node's ``q`` (``stop_before``) and keeps only nodes it ``admits``. A new
builder is one class with a :meth:`TreeBuilder.grow`.
"""

from __future__ import annotations

import numpy as np
import torch

from specpack.draft import Draft
from specpack.protocols import StopRule


class DraftTree:
    """Nodes drafted for one request at one step, with the drafter's ``q`` rows."""

    def __init__(self, vocab: int, stochastic: bool):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.probs: list[float] = []
        self.depths: list[int] = []
        self.stochastic = stochastic
        self.rows: dict[int, torch.Tensor] = {}  # node (-1 root) -> q row
        self.vocab = vocab

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, token: int, parent: int, prob: float, depth: int) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.probs.append(prob)
        self.depths.append(depth)
        return len(self.tokens) - 1

    def path_prob(self, node: int) -> float:
        return 1.0 if node < 0 else self.probs[node]

    def to_draft(self) -> Draft:
        n = len(self.tokens)
        dists = None
        if self.stochastic:
            dists = np.zeros((n + 1, self.vocab), np.float32)
            for node, row in self.rows.items():
                dists[node + 1] = row.float().cpu().numpy()
        return Draft(np.asarray(self.tokens, np.int32), np.asarray(self.parents, np.int32),
                     np.asarray(self.probs, np.float32), dists,
                     root_dist=self.rows[-1].float().cpu().numpy())


class TreeBuilder:
    """Strategy of a model drafter: grows one level of a :class:`DraftTree`."""

    def grow(self, tree: DraftTree, frontier: list[int], depth: int, room: int,
             stop_rule: StopRule, gen: torch.Generator) -> list[int]:
        """Add the children of ``frontier`` (at most ``room`` nodes) at ``depth``;
        return the new nodes to expand next."""
        raise NotImplementedError


class ChainBuilder(TreeBuilder):
    """One child per level: argmax (greedy) or one sample (stochastic)."""

    def grow(self, tree, frontier, depth, room, stop_rule, gen):
        if room <= 0 or not frontier:
            return []
        u = frontier[0]
        q, pu = tree.rows[u], tree.path_prob(u)
        if stop_rule.stop_before(depth, q, pu):
            return []
        if tree.stochastic:
            t = int(torch.multinomial(q.float(), 1, generator=gen))
        else:
            t = int(torch.argmax(q))
        p = pu * float(q[t])
        if not (tree.stochastic or stop_rule.admits(p)):
            return []
        return [tree.add(t, u, p, depth)]


class TopKTreeBuilder(TreeBuilder):
    """The ``width`` most likely children per frontier node, best ``room`` kept."""

    def __init__(self, width: int, max_expand: int):
        self.width, self.max_expand = width, max_expand

    def grow(self, tree, frontier, depth, room, stop_rule, gen):
        cands = []  # (path prob, token, parent)
        for u in frontier:
            q, pu = tree.rows[u], tree.path_prob(u)
            if stop_rule.stop_before(depth, q, pu):
                continue
            top = torch.topk(q, min(self.width, q.numel()))
            for t, qt in zip(top.indices.tolist(), top.values.tolist()):
                if stop_rule.admits(pu * qt):
                    cands.append((pu * qt, t, u))
        cands.sort(key=lambda c: -c[0])
        level = [tree.add(t, u, p, depth) for p, t, u in cands[:max(room, 0)]]
        return level[:self.max_expand]          # already sorted by path probability


class SampledTreeBuilder(TreeBuilder):
    """``width`` i.i.d. children per expanded node, a node's group kept whole."""

    def __init__(self, width: int, max_expand: int):
        self.width, self.max_expand = width, max_expand

    def grow(self, tree, frontier, depth, room, stop_rule, gen):
        level = []
        for u in frontier:
            q, pu = tree.rows[u], tree.path_prob(u)
            if stop_rule.stop_before(depth, q, pu):
                continue
            if len(level) + self.width > room:
                break
            picks = torch.multinomial(q.float(), self.width, replacement=True, generator=gen)
            level += [tree.add(t, u, pu * float(q[t]), depth) for t in picks.tolist()]
        level.sort(key=lambda i: -tree.probs[i])
        return level[:self.max_expand]


def builder_for(mode: str, width: int, max_expand: int, stochastic: bool) -> TreeBuilder:
    """The builder of a draft-model config for a greedy or a sampling request."""
    if mode == "chain":
        return ChainBuilder()
    if stochastic:
        return SampledTreeBuilder(width, max_expand)
    return TopKTreeBuilder(width, max_expand)
