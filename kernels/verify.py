"""Verification of draft trees against the target (torch reference).

Row convention: the target is run on ``[root] + draft nodes``; row 0 of the
target output belongs to the root (the last committed token) and row
``i + 1`` to draft node ``i``. The output of a row is the target's prediction
for the *child* of that node.

* **Greedy** (:func:`greedy_verify`): starting at the root, follow the child
  whose token equals the target's argmax at the current node; stop when none
  does. Emitted tokens = accepted path + the argmax at the last accepted node
  (the bonus token). Identical to plain greedy decoding by construction.
* **Stochastic** (:func:`sample_verify`), exact for any target distribution
  ``p`` (already temperature/top-p processed) at every node:

  - drafts with ``Draft.dists`` (children of node ``u`` drawn i.i.d. from the
    draft distribution ``q_u``): multi-draft speculative sampling (SpecInfer,
    Miao et al., 2024, §4.2; for one child it is the chain rule of Leviathan
    et al., 2023 / Chen et al., 2023): for each child ``x`` in order accept
    with ``min(1, p(x) / q(x))``, otherwise ``p <- norm(max(0, p - q))``;
  - deterministic drafts (no ``dists``: model-free proposers, top-k trees):
    each child is a one-hot proposal ``q = delta_x``: accept with ``p(x)``,
    otherwise ``p <- norm(p with p(x) = 0)``.

  If every child is rejected, the next token is sampled from the residual
  ``p``; after an accepted leaf, from the target's ``p`` at that leaf. Either
  way the emitted token has exactly distribution ``p`` at each position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specpack.draft import Draft


@dataclass
class VerifyResult:
    """Accepted path (node indices) and the tokens to commit (path + one more)."""

    accepted_nodes: list[int]
    tokens: list[int]

    @property
    def num_accepted(self) -> int:
        return len(self.accepted_nodes)


def children_lists(draft: Draft) -> list[list[int]]:
    """``out[0]`` = root's children, ``out[i + 1]`` = children of node ``i``, in draft order."""
    out: list[list[int]] = [[] for _ in range(len(draft) + 1)]
    for i, p in enumerate(draft.parents.tolist()):
        out[p + 1].append(i)
    return out


def greedy_verify(draft: Draft, target_argmax) -> VerifyResult:
    """``target_argmax[r]``: target argmax at row ``r`` (0 = root, i + 1 = node i)."""
    argmax = target_argmax.tolist() if hasattr(target_argmax, "tolist") else list(target_argmax)
    kids = children_lists(draft)
    toks = draft.tokens.tolist()
    row, path = 0, []
    while True:
        want = argmax[row]
        nxt = next((c for c in kids[row] if toks[c] == want), None)
        if nxt is None:
            return VerifyResult(path, [toks[c] for c in path] + [int(want)])
        path.append(nxt)
        row = nxt + 1


def _sample(p: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(p, 1, generator=generator).item())


def _normalise(p: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    s = p.sum()
    return p / s if s > 0 else fallback


def sample_verify(draft: Draft, target_probs: torch.Tensor,
                  generator: torch.Generator | None = None) -> VerifyResult:
    """Exact stochastic verification; ``target_probs``: ``[len(draft) + 1, V]``."""
    kids = children_lists(draft)
    toks = draft.tokens.tolist()
    dists = None if draft.dists is None else torch.as_tensor(draft.dists)
    row, path = 0, []
    while True:
        p = target_probs[row].float()
        children = kids[row]
        accepted = None
        if children:
            p = p.clone()
            q = None if dists is None else dists[row].float()
            for c in children:
                x = toks[c]
                r = torch.rand((), generator=generator).item()
                if q is not None:
                    qx = float(q[x])
                    a = 1.0 if qx <= 0 else min(1.0, float(p[x]) / qx)
                    if r < a:
                        accepted = c
                        break
                    p = _normalise(torch.clamp(p - q, min=0.0), p)
                else:
                    if r < float(p[x]):
                        accepted = c
                        break
                    p[x] = 0.0
                    p = _normalise(p, target_probs[row].float())
        if accepted is None:
            nxt = _sample(p, generator)
            return VerifyResult(path, [toks[c] for c in path] + [nxt])
        path.append(accepted)
        row = accepted + 1
