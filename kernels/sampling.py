"""Target/draft distributions after temperature and nucleus (top-p) filtering.

``probs = softmax(logits / T)``; with ``top_p < 1`` the smallest set of
highest-probability tokens whose mass reaches ``top_p`` is kept and
renormalised (Holtzman et al., 2020). ``T == 0`` means greedy and is handled
by the callers with ``argmax``; this function requires ``T > 0``.
"""

from __future__ import annotations

import torch


def process_logits(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Rows of ``logits`` -> float32 probability rows (temperature, then top-p)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, dim=-1, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        # keep a token if the mass before it is < top_p (always keeps the top one)
        keep_sorted = (cum - sorted_p) < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs
