"""Drafting engine: a causal LM over a paged KV pool, batched block forwards, commit/rollback.

The engine owns the forwards and the keys/values; *what* to forward (which
frontier nodes, how many children) is a tree builder's decision
(:mod:`specpack.proposers.model.builders`). Design after vLLM's paged
attention (Kwon et al., SOSP 2023, arXiv 2309.06180) and gpt-fast's
preallocated cache:

* **Pool.** Per layer ``K``/``V`` ``[num_pages, page_size, H_kv, D]``
  allocated once (``num_pages = ceil(max_tokens / page_size)``), on the
  model's device and in the engine's dtype. Request ``r`` owns the pages in
  its block table; logical position ``p`` lives at page ``table_r[p // S]``,
  slot ``p % S``. Nothing is concatenated or re-padded per step.
* **Committed prefix + pending block.** A request has ``L_r`` committed
  tokens (positions ``0 .. L_r - 1``) and a pending block of ``K_r`` tokens
  written right after them (positions ``L_r .. L_r + K_r - 1``): draft nodes
  or a verification tree. Each block token has a parent inside the block
  (``-1``: the prefix only); it attends to the whole prefix and to its block
  ancestors and itself, a bit row over the block's columns.
* **One forward per level.** :meth:`DraftEngine.append` runs the new tokens
  of *all* requests as one packed sequence ``[1, N]`` (no padding); in every
  attention layer their keys/values are written into the pool and attention
  is :func:`specpack.kernels.tree_attention` with the block tables, prefix
  lengths ``L_r``, ``block_lens = K_r`` (old + new block tokens) and the new
  tokens as the queries (the last rows of each block). The plan is made once
  per forward and run per layer.
* **Commit / rollback.** ``commit(r, keep)`` moves the KV of the kept block
  slots to positions ``L_r, L_r + 1, ...`` (a copy of ``len(keep)`` slots per
  layer, the prefix never moves) and makes them committed; the rest of the
  block is dropped (rollback = ``commit(r, [])``). Pages past the new end go
  back to the free list.
* **Budget.** Pages are the only memory; when none are free the least
  recently used request outside the current batch is evicted (all its pages
  freed). An evicted request is re-prefilled when it comes back, never
  wrong; a batch that alone exceeds the pool raises :class:`PoolExhausted`.

Catch-up of committed tokens (prefill, tokens accepted since the last step)
goes through the same forward as causal chains, at most ``chunk_tokens``
per request and ``max_batch_tokens`` per forward.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np
import torch

from specpack.kernels.tree_attention import TreeAttentionPlan
from specpack.kernels.tree_mask import pack_bits

ENGINE_ATTENTION = "specpack_engine"


class PoolExhausted(RuntimeError):
    """The requests of one forward need more pages than the pool has."""


def _engine_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      specpack_engine=None, **kwargs):
    """transformers attention function: write this layer's new K/V into the
    engine's pool, then tree attention of the new tokens over prefix + block."""
    step = specpack_engine
    if step is None:
        raise RuntimeError("the specpack engine attention runs only inside DraftEngine forwards")
    layer = module.layer_idx
    k_pool, v_pool = step.pool.k[layer], step.pool.v[layer]
    _, Hkv, N, D = key.shape
    flat_k = k_pool.view(-1, Hkv, D)
    flat_v = v_pool.view(-1, Hkv, D)
    flat_k.index_copy_(0, step.slots, key[0].transpose(0, 1).to(k_pool.dtype))
    flat_v.index_copy_(0, step.slots, value[0].transpose(0, 1).to(v_pool.dtype))
    q = query[0].transpose(0, 1)                                         # [N, Hq, D]
    if step.plan is None:
        step.plan = TreeAttentionPlan(
            step.table, step.prefix_lens, step.cu_q, step.bits, num_qo_heads=q.shape[1],
            num_kv_heads=Hkv, head_dim=D, page_size=k_pool.shape[1], dtype=q.dtype,
            kv_dtype=k_pool.dtype, device=q.device, scale=scaling, backend=step.backend,
            block_lens=step.block_lens)
    out = step.plan.run(q.to(step.plan.dtype), k_pool, v_pool)
    return out.to(query.dtype)[None], None


def _no_mask(*args, **kwargs):
    """The engine's attention builds its own visibility; transformers makes no mask."""
    return None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if ENGINE_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ENGINE_ATTENTION, _engine_attention)
        AttentionMaskInterface.register(ENGINE_ATTENTION, _no_mask)


class KVPool:
    """Per-layer paged K/V and the free list of pages."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, page_size: int,
                 num_pages: int, dtype: torch.dtype, device: torch.device):
        shape = (num_pages, page_size, num_kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.page_size, self.num_pages = page_size, num_pages
        self.free: list[int] = list(range(num_pages - 1, -1, -1))

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


@dataclass
class _Seq:
    """One request's state: committed tokens, pages, pending block."""
    tokens: list[int] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    block_tokens: list[int] = field(default_factory=list)
    block_parents: list[int] = field(default_factory=list)

    @property
    def committed(self) -> int:
        return len(self.tokens)


@dataclass
class _Step:
    """Metadata of one forward, read by every attention layer."""
    pool: KVPool
    slots: torch.Tensor          # [N] flat pool slot of each new token
    table: torch.Tensor          # [B, max_pages] int32
    prefix_lens: torch.Tensor    # [B] committed lengths
    cu_q: torch.Tensor           # [B + 1] new-token offsets
    bits: torch.Tensor           # [N, W] visibility over block columns
    block_lens: torch.Tensor     # [B] block sizes after this forward
    backend: str
    plan: TreeAttentionPlan | None = None


class DraftEngine:
    """A ``transformers`` causal LM served from a paged KV pool (module docstring)."""

    def __init__(self, model, *, max_tokens: int = 65536, page_size: int = 16,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 backend: str = "auto", chunk_tokens: int = 512, max_batch_tokens: int = 4096):
        _register()
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        self.model = model.eval()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        cfg = model.config
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        if page_size < 1 or max_tokens < page_size:
            raise ValueError(f"page_size {page_size} / max_tokens {max_tokens}: need "
                             "1 <= page_size <= max_tokens")
        self.pool = KVPool(cfg.num_hidden_layers, kv_heads, head_dim, page_size,
                           -(-max_tokens // page_size), self.dtype, self.device)
        self.vocab_size = int(cfg.vocab_size)
        self.backend = backend
        self.chunk_tokens, self.max_batch_tokens = chunk_tokens, max_batch_tokens
        self.seqs: OrderedDict[Hashable, _Seq] = OrderedDict()   # LRU order, oldest first
        self.pinned: set = set()   # requests of the step in progress: never evicted
        self.evictions = 0

    # ------------------------------------------------------------ bookkeeping
    def committed(self, key: Hashable) -> list[int]:
        s = self.seqs.get(key)
        return s.tokens if s is not None else []

    def block_size(self, key: Hashable) -> int:
        s = self.seqs.get(key)
        return len(s.block_tokens) if s is not None else 0

    def release(self, key: Hashable) -> None:
        s = self.seqs.pop(key, None)
        if s is not None:
            self.pool.free.extend(reversed(s.pages))

    def pages_in_use(self) -> int:
        return self.pool.num_pages - len(self.pool.free)

    def truncate(self, key: Hashable, n: int) -> None:
        """Keep the first ``n`` committed tokens; drop the pending block."""
        s = self.seqs.get(key)
        if s is None:
            return
        del s.tokens[n:]
        s.block_tokens.clear()
        s.block_parents.clear()
        self._trim_pages(s, s.committed)

    def _trim_pages(self, s: _Seq, length: int) -> None:
        need = -(-length // self.pool.page_size)
        if len(s.pages) > need:
            self.pool.free.extend(reversed(s.pages[need:]))
            del s.pages[need:]

    def _reserve(self, s: _Seq, length: int, protected: set) -> None:
        """Pages for ``length`` positions; evict idle requests (LRU) if needed."""
        need = -(-length // self.pool.page_size) - len(s.pages)
        while need > len(self.pool.free):
            victim = next(k for k in self.seqs if k not in protected)
            self.release(victim)
            self.evictions += 1
        for _ in range(max(need, 0)):
            s.pages.append(self.pool.free.pop())

    def _check_fits(self, keys: Sequence[Hashable], lengths: Sequence[int]) -> None:
        """Raise :class:`PoolExhausted` (evicting nobody) unless ``keys`` can
        reach ``lengths`` tokens with free pages plus those of idle requests."""
        ps = self.pool.page_size
        protected = set(keys) | self.pinned
        need = sum(max(0, -(-n // ps) - len(self.seqs[k].pages if k in self.seqs else ()))
                   for k, n in zip(keys, lengths))
        idle = sum(len(q.pages) for k, q in self.seqs.items() if k not in protected)
        if need > len(self.pool.free) + idle:
            raise PoolExhausted(
                f"draft KV pool of {self.pool.num_pages} pages x {ps} tokens cannot hold "
                f"this batch; raise max_tokens")

    def _touch(self, keys: Sequence[Hashable]) -> list[_Seq]:
        out = []
        for k in keys:
            s = self.seqs.get(k)
            if s is None:
                s = self.seqs[k] = _Seq()
            self.seqs.move_to_end(k)
            out.append(s)
        return out

    # ------------------------------------------------------------ forwards
    @torch.no_grad()
    def append(self, keys: Sequence[Hashable], tokens: Sequence[Sequence[int]],
               positions: Sequence[Sequence[int]], parents: Sequence[Sequence[int]]
               ) -> list[torch.Tensor]:
        """Add block tokens for several requests in one forward; float32 logits ``[n_r, V]``.

        ``parents[r][i]``: block index of token ``i``'s parent (``-1``: the
        prefix only); a parent is an earlier block token of the same request
        (of this call or an earlier one). ``positions`` are the rotary
        positions (``L_r - 1 + depth`` for a drafted node)."""
        keys = list(keys)
        if len(set(keys)) != len(keys):
            raise ValueError("append: a request appears twice in one forward")
        seqs = self._touch(keys)
        self._check_fits(keys, [s.committed + len(s.block_tokens) + len(t)
                                for s, t in zip(seqs, tokens)])
        protected = set(keys) | self.pinned
        for s, toks in zip(seqs, tokens):
            self._reserve(s, s.committed + len(s.block_tokens) + len(toks), protected)
        ps = self.pool.page_size
        slots, rows, blens, ids, pos, cu = [], [], [], [], [], [0]
        for s, toks, p_r, par in zip(seqs, tokens, positions, parents):
            n, k0, L = len(toks), len(s.block_tokens), s.committed
            if len(p_r) != n or len(par) != n:
                raise ValueError("append: tokens, positions and parents differ in length")
            s.block_parents.extend(int(x) for x in par)
            s.block_tokens.extend(int(t) for t in toks)
            K = k0 + n
            logical = L + np.arange(k0, K)
            pages = np.asarray(s.pages, np.int64)
            slots.append(pages[logical // ps] * ps + logical % ps)
            rows.append(self._visibility(s.block_parents, k0, K))
            blens.append(K)
            ids.extend(toks)
            pos.extend(p_r)
            cu.append(cu[-1] + n)
        Km = max(blens) if blens else 1
        bits = pack_bits(np.concatenate([np.pad(r, ((0, 0), (0, Km - r.shape[1]))) for r in rows])
                          if rows else np.zeros((0, Km), bool))
        max_pages = max(len(s.pages) for s in seqs)
        table = np.zeros((len(seqs), max_pages), np.int32)
        for b, s in enumerate(seqs):
            table[b, :len(s.pages)] = s.pages
        dev = self.device
        step = _Step(self.pool, torch.as_tensor(np.concatenate(slots), device=dev),
                     torch.as_tensor(table, device=dev),
                     torch.as_tensor([s.committed for s in seqs], dtype=torch.int32, device=dev),
                     torch.as_tensor(cu, dtype=torch.int32, device=dev), bits.to(dev),
                     torch.as_tensor(blens, dtype=torch.int32, device=dev), self.backend)
        ids_t = torch.as_tensor(ids, dtype=torch.long, device=dev)[None]
        pos_t = torch.as_tensor(pos, dtype=torch.long, device=dev)[None]
        cfg = self.model.config
        old = cfg._attn_implementation
        cfg._attn_implementation = ENGINE_ATTENTION
        try:
            out = self.model(input_ids=ids_t, position_ids=pos_t, use_cache=False,
                             specpack_engine=step)
        finally:
            cfg._attn_implementation = old
        logits = out.logits[0].float()
        return [logits[cu[b]:cu[b + 1]] for b in range(len(seqs))]

    @staticmethod
    def _visibility(parents: list[int], k0: int, K: int) -> np.ndarray:
        """Rows ``k0 .. K-1``: block token ``i`` sees itself and its ancestors."""
        rows = np.zeros((K - k0, K), dtype=bool)
        for i in range(k0, K):
            r = rows[i - k0]
            p = parents[i]
            if p >= k0:                      # parent among this call's rows: copy its row
                r[:] = rows[p - k0]
            else:
                while p >= 0:
                    r[p] = True
                    p = parents[p]
            r[i] = True
        return rows

    def commit(self, keys: Sequence[Hashable], keeps: Sequence[Sequence[int]]) -> None:
        """Keep block slots ``keeps[r]`` (a path, root first) as committed tokens
        ``L_r, L_r + 1, ...``; drop the rest of each block (one copy per layer)."""
        ps = self.pool.page_size
        src, dst = [], []
        for key, keep in zip(keys, keeps):
            s = self.seqs[key]
            keep = [int(i) for i in keep]
            if any(i < 0 or i >= len(s.block_tokens) for i in keep):
                raise ValueError(f"commit: slots {keep} outside a block of {len(s.block_tokens)}")
            L = s.committed
            pages = np.asarray(s.pages, np.int64)
            a = L + np.asarray(keep, np.int64)
            d = L + np.arange(len(keep))
            moved = a != d
            src.append((pages[a // ps] * ps + a % ps)[moved])
            dst.append((pages[d // ps] * ps + d % ps)[moved])
            s.tokens.extend(s.block_tokens[i] for i in keep)
            s.block_tokens.clear()
            s.block_parents.clear()
        if src:
            src_t = torch.as_tensor(np.concatenate(src), device=self.device)
            dst_t = torch.as_tensor(np.concatenate(dst), device=self.device)
            if src_t.numel():
                for t in self.pool.k + self.pool.v:
                    flat = t.view(-1, t.shape[2], t.shape[3])
                    flat.index_copy_(0, dst_t, flat.index_select(0, src_t))
        for key in keys:
            s = self.seqs[key]
            self._trim_pages(s, s.committed)

    def rollback(self, keys: Sequence[Hashable]) -> None:
        """Drop every request's pending block."""
        self.commit(keys, [[] for _ in keys])

    def extend(self, keys: Sequence[Hashable], chunks: Sequence[Sequence[int]]) -> list[torch.Tensor | None]:
        """Commit token chunks causally (prefill / catch-up); logits of each
        chunk's last token (None for an empty chunk). Long chunks go in pieces
        of ``chunk_tokens``, forwards hold at most ``max_batch_tokens``."""
        last: list[torch.Tensor | None] = [None] * len(keys)
        todo = [(i, list(c)) for i, c in enumerate(chunks) if len(c)]
        pending = [k for k in keys if self.block_size(k)]
        if pending:
            self.rollback(pending)
        self._check_fits(keys, [len(self.committed(k)) + len(c) for k, c in zip(keys, chunks)])
        while todo:
            batch, used, rest = [], 0, []
            for i, c in todo:
                n = min(len(c), self.chunk_tokens)
                if batch and used + n > self.max_batch_tokens:
                    rest.append((i, c))
                    continue
                batch.append((i, c[:n]))
                used += n
                if len(c) > n:
                    rest.append((i, c[n:]))
            bkeys = [keys[i] for i, _ in batch]
            toks = [c for _, c in batch]
            pos = [range(len(self.committed(k)), len(self.committed(k)) + len(c))
                   for k, c in zip(bkeys, toks)]
            par = [range(-1, len(c) - 1) for c in toks]
            out = self.append(bkeys, toks, pos, par)
            self.commit(bkeys, [range(len(c)) for c in toks])
            for (i, _), lg in zip(batch, out):
                last[i] = lg[-1]
            todo = rest
        return last
