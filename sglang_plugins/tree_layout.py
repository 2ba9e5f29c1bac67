"""specpack :class:`~specpack.draft.Draft` -> SGLang's NGRAM verify tree layout.

SGLang verifies a fixed number ``w`` (``--speculative-num-draft-tokens``) of
tree nodes per request:

* ``tokens[0]`` is the last committed token (the root), ``tokens[1 + i]``
  draft node ``i``; ``mask[i, j]`` (``w x w`` bool, row-major, flattened
  per request) is true iff node ``j`` is node ``i`` or one of its
  ancestors - the root is an ancestor of every node;
* from the mask SGLang derives (``reconstruct_indices_from_tree_mask``):
  ``positions = seq_len + depth``, parent = the largest ancestor index,
  ``retrive_next_token`` = first child, ``retrive_next_sibling`` = next
  child of the same parent (``-1`` = none), which its greedy / rejection
  verifier walks from node 0.

Parents precede children in a ``Draft``, so the largest-index ancestor is
the parent and sibling order is draft order. Drafts with fewer than ``w - 1``
nodes are padded with children of the root carrying the root's own token
(a padding node is accepted only when the target predicts that token
anyway, so output stays exactly the target's; it costs one verify slot,
which SGLang spends regardless of the width actually used).
"""

from __future__ import annotations

import numpy as np

from specpack.draft import Draft


def draft_to_tree(draft: Draft, last_token: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [width] int64, mask [width, width] bool) for one request."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    d = draft.truncated(width - 1) if len(draft) > width - 1 else draft
    n = len(d)
    tokens = np.full(width, last_token, np.int64)
    tokens[1: n + 1] = d.tokens
    mask = np.zeros((width, width), bool)
    mask[:, 0] = True
    idx = np.arange(width)
    mask[idx, idx] = True
    # ancestors of node 1 + i: its parent's row plus itself
    for i in range(n):
        p = int(d.parents[i])
        if p >= 0:
            mask[1 + i, : 1 + p + 1] |= mask[1 + p, : 1 + p + 1]
    return tokens, mask


def tree_links(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(depth, parent, first child, next sibling) of one request's ``w x w`` mask,
    computed independently of SGLang (for tests and the docs' contract)."""
    w = mask.shape[0]
    strict = mask & (np.arange(w)[None, :] < np.arange(w)[:, None])
    depth = strict.sum(1)
    parent = np.array([np.flatnonzero(strict[i]).max() if strict[i].any() else -1
                       for i in range(w)])
    first = np.full(w, -1)
    sib = np.full(w, -1)
    last_child: dict[int, int] = {}
    for i in range(w):
        p = int(parent[i])
        if p < 0:
            continue
        if first[p] < 0:
            first[p] = i
        if p in last_child:
            sib[last_child[p]] = i
        last_child[p] = i
    return depth, parent, first, sib


def accepted_path(tokens: np.ndarray, mask: np.ndarray, target_next: np.ndarray) -> list[int]:
    """Greedy verification walk over the layout (first child / next sibling
    from node 0, as SGLang's verifier does): accepted node indices, root
    excluded. ``target_next[i]`` is the target's argmax after node ``i``."""
    _, _, first, sib = tree_links(mask)
    out, u = [], 0
    while True:
        c = int(first[u])
        while c >= 0 and tokens[c] != target_next[u]:
            c = int(sib[c])
        if c < 0:
            return out
        out.append(c)
        u = c
