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


def _probs(d: Draft) -> np.ndarray:
    if d.probs is not None:
        return d.probs.astype(np.float64)
    # no probabilities: a node's value decays with depth so parents come first
    return 0.5 ** d.depths.astype(np.float64)


def merge_trees(drafts: Sequence[Draft], max_nodes: int) -> Draft:
    """Union of ``drafts`` by token path, best ``max_nodes`` nodes."""
    children: list[dict[int, int]] = [{}]      # merged node 0 = root
    tok, par, prob, depth, first = [-1], [-1], [1.0], [0], [0]
    rank = 0
    for d in drafts:
        if len(d) == 0:
            continue
        p = _probs(d)
        dep = d.depths
        ids = np.empty(len(d), np.int64)
        for i in range(len(d)):
            u = 0 if d.parents[i] < 0 else int(ids[d.parents[i]])
            t = int(d.tokens[i])
            v = children[u].get(t)
            if v is None:
                v = len(tok)
                children[u][t] = v
                children.append({})
                tok.append(t)
                par.append(u)
                prob.append(float(p[i]))
                depth.append(int(dep[i]))
                first.append(rank)
            else:
                prob[v] = max(prob[v], float(p[i]))
            ids[i] = v
            rank += 1
    n = len(tok) - 1
    if n == 0 or max_nodes <= 0:
        return Draft.empty()
    # enforce monotone path probabilities, then pick the best nodes
    for v in range(1, len(tok)):
        if par[v] > 0:
            prob[v] = min(prob[v], prob[par[v]])
    order = sorted(range(1, len(tok)), key=lambda v: (-prob[v], depth[v], first[v]))[:max_nodes]
    keep = set(order)
    order = [v for v in order if par[v] == 0 or par[v] in keep]
    order.sort(key=lambda v: (depth[v], first[v]))
    index = {v: i for i, v in enumerate(order)}
    return Draft(np.array([tok[v] for v in order], np.int32),
                 np.array([index[par[v]] if par[v] else -1 for v in order], np.int32),
                 np.array([prob[v] for v in order], np.float32))


def path_set(d: Draft) -> set[tuple[int, ...]]:
    """Every node's root path as a token tuple (for tests and checks)."""
    out, paths = set(), []
    for i in range(len(d)):
        pp = () if d.parents[i] < 0 else paths[d.parents[i]]
        paths.append(pp + (int(d.tokens[i]),))
        out.add(paths[-1])
    return out
