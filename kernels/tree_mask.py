"""Tree masks and indices for a batch of drafts, vectorised.

Verification runs the target over ``[root] + nodes`` per request; the
*tree block* of request ``b`` has ``T_b = len(draft_b) + 1`` tokens (root
first). Token ``i`` of the block may see token ``j`` iff ``j`` is ``i`` or one
of its ancestors (the root is everyone's ancestor).

Bit-packed layout (what the kernels read): ``bits[t, w]`` (int32) for packed
token ``t`` (requests concatenated), bit ``j % 32`` of word ``j // 32`` set
iff block token ``j`` is visible; ``W = ceil(max T_b / 32)`` words per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from specpack.draft import Draft


@dataclass
class TreeBatch:
    """Index data of a verification batch (all int32 / int64 tensors, CPU)."""

    tree_sizes: torch.Tensor      # [B] T_b, root included
    cu_tree: torch.Tensor         # [B + 1] offsets of each block in packed tokens
    depths: torch.Tensor          # [sum T_b] depth (root 0)
    dense_mask: torch.Tensor      # [sum T_b, max T] bool, block-local columns
    bits: torch.Tensor            # [sum T_b, W] int32 bit-packed dense_mask


def block_parents(drafts: Sequence[Draft]) -> tuple[np.ndarray, np.ndarray]:
    """Parents within each block (root = -1, node i -> parents[i] + 1) and sizes."""
    sizes = np.fromiter((len(d) + 1 for d in drafts), np.int64, len(drafts))
    par = np.full(int(sizes.sum()), -1, np.int64)
    off = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for d, o in zip(drafts, off):
        if len(d):
            par[o + 1:o + 1 + len(d)] = d.parents.astype(np.int64) + 1
    return par, sizes


def build_tree_batch(drafts: Sequence[Draft]) -> TreeBatch:
    """Masks and depths for all blocks in O(sum T x max depth) array operations.

    Ancestor sets come from pointer jumping over the packed parent array
    (each round doubles the reach), not from a Python loop per node.
    """
    par, sizes = block_parents(drafts)
    n = par.size
    off = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    T = int(sizes.max()) if n else 1
    local = np.arange(n) - np.repeat(off, sizes)           # column of each token in its block
    glob_par = np.where(par >= 0, par + np.repeat(off, sizes), -1)
    dense = np.zeros((n, T), dtype=bool)
    rows = np.arange(n)
    dense[rows, local] = True
    depth = np.zeros(n, np.int64)
    anc = glob_par.copy()
    while np.any(anc >= 0):                                   # walk up one level per round
        has = anc >= 0
        dense[rows[has], local[anc[has]]] = True
        depth[has] += 1
        anc[has] = glob_par[anc[has]]
    return TreeBatch(torch.as_tensor(sizes, dtype=torch.int32),
                     torch.as_tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.int32),
                     torch.as_tensor(depth, dtype=torch.int32),
                     torch.as_tensor(dense), pack_bits(dense))


def pack_bits(dense: np.ndarray) -> torch.Tensor:
    """``[n, T]`` bool -> ``[n, ceil(T / 32)]`` int32, bit ``j % 32`` of word ``j // 32``."""
    n, T = dense.shape
    W = max(1, (T + 31) // 32)
    padded = np.zeros((n, W * 32), dtype=bool)
    padded[:, :T] = dense
    packed = np.packbits(padded, axis=1, bitorder="little")       # [n, 4 W] bytes, LSB first
    return torch.from_numpy(np.ascontiguousarray(packed).view("<i4").reshape(n, W).copy())


def unpack_bits(bits: torch.Tensor, T: int) -> torch.Tensor:
    """Inverse of the packing: ``[n, W]`` int32 -> ``[n, T]`` bool."""
    j = torch.arange(T, device=bits.device)
    words = bits[:, j // 32].to(torch.int64) & 0xFFFFFFFF
    return ((words >> (j % 32)) & 1).bool()
