"""Merge draft trees by longest-prefix matching.

Two nodes are the same when their root paths spell the same tokens; a merged
node keeps the larger of the two path probabilities (both trees' node
probabilities are non-increasing along a path, so the merge's are too). The
result keeps the ``max_nodes`` most probable nodes; ties go to the shallower
node, then to the first tree, so a parent is always kept before its
children.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from specpack.draft import Draft


class TokenTrie:
    """Trie of token paths: node 0 is the root; :meth:`child` finds or adds."""

    def __init__(self):
        self.children: list[dict[int, int]] = [{}]
        self.tok, self.par, self.depth = [-1], [-1], [0]

    def __len__(self) -> int:
        return len(self.tok)

    def child(self, u: int, t: int) -> tuple[int, bool]:
        """(node for token ``t`` under ``u``, whether it was just added)."""
        v = self.children[u].get(t)
        if v is not None:
            return v, False
        v = len(self.tok)
        self.children[u][t] = v
        self.children.append({})
        self.tok.append(t)
        self.par.append(u)
        self.depth.append(self.depth[u] + 1)
        return v, True

    def draft(self, nodes: list[int], probs) -> Draft:
        """A Draft of ``nodes`` (parents before children, each with its
        parent unless that is the root) with node probabilities ``probs[v]``."""
        index = {v: i for i, v in enumerate(nodes)}
        return Draft(np.array([self.tok[v] for v in nodes], np.int32),
                     np.array([index[self.par[v]] if self.par[v] else -1 for v in nodes],
                              np.int32),
                     np.array([probs[v] for v in nodes], np.float32))


def _probs(d: Draft) -> np.ndarray:
    if d.probs is not None:
        return d.probs.astype(np.float64)
    # no probabilities: a node's value decays with depth so parents come first
    return 0.5 ** d.depths.astype(np.float64)


def merge_trees(drafts: Sequence[Draft], max_nodes: int) -> Draft:
    """Union of ``drafts`` by token path, best ``max_nodes`` nodes."""
    trie = TokenTrie()
    prob, first = [1.0], [0]
    rank = 0
    for d in drafts:
        if len(d) == 0:
            continue
        p = _probs(d)
        ids = np.empty(len(d), np.int64)
        for i in range(len(d)):
            u = 0 if d.parents[i] < 0 else int(ids[d.parents[i]])
            v, added = trie.child(u, int(d.tokens[i]))
            if added:
                prob.append(float(p[i]))
                first.append(rank)
            else:
                prob[v] = max(prob[v], float(p[i]))
            ids[i] = v
            rank += 1
    par, depth = trie.par, trie.depth
    if len(trie) == 1 or max_nodes <= 0:
        return Draft.empty()
    # enforce monotone path probabilities, then pick the best nodes
    for v in range(1, len(trie)):
        if par[v] > 0:
            prob[v] = min(prob[v], prob[par[v]])
    order = sorted(range(1, len(trie)), key=lambda v: (-prob[v], depth[v], first[v]))[:max_nodes]
    keep = set(order)
    order = [v for v in order if par[v] == 0 or par[v] in keep]
    order.sort(key=lambda v: (depth[v], first[v]))
    return trie.draft(order, prob)

def path_set(d: Draft) -> set[tuple[int, ...]]:
    """Every node's root path as a token tuple (for tests and checks)."""
    out, paths = set(), []
    for i in range(len(d)):
        pp = () if d.parents[i] < 0 else paths[d.parents[i]]
        paths.append(pp + (int(d.tokens[i]),))
        out.add(paths[-1])
    return out
