"""A Hugging Face causal LM with one KV cache per request and tree forwards.

Used by the draft-model proposer (for the draft LM) and by the reference
runtime ``specpack.hf`` (for the target). One call runs a ragged batch:
request ``b`` feeds ``T_b`` new tokens at explicit positions; each new token
attends to

* the request's cached tokens, all of them or those flagged in
  ``past_visible[b]`` (``[T_b, L_b]`` bool), and
* the new tokens flagged in ``new_mask[b]`` (``[T_b, T_b]`` bool, e.g. the
  tree ancestor mask; a chain is the lower triangle).

Caches of different lengths are right-padded into one ``DynamicCache`` and
the visibility is passed as a 4D additive mask (``[B, 1, T, L_max + T]``),
which transformers uses as-is. The new tokens' keys/values are kept as
*pending* until :meth:`CachedLM.commit` appends the chosen ones, so a
verifier keeps the accepted path only (KV compaction, no recompute).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Hashable, Sequence

import numpy as np
import torch

TREE_ATTENTION_NAME = "specpack_tree"


def _tree_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                            specpack_tree=None, **kwargs):
    """transformers attention function: :func:`specpack.kernels.tree_attention`
    over the padded batch cache when ``specpack_tree`` metadata is passed,
    plain SDPA otherwise. The padded cache ``[B, Hkv, L_max + T_max, D]`` is
    read as a paged cache with page size 1 whose block table maps each
    request's logical positions (prefix, then tree block) to its rows. The
    step is planned once per forward (:func:`_tree_plan`), run per layer."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if specpack_tree is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    meta = specpack_tree
    B, Hq, Tm, D = query.shape
    Hkv, S = key.shape[1], key.shape[2]
    q = query.transpose(1, 2).reshape(B * Tm, Hq, D).index_select(0, meta["q_index"])
    kc = key.transpose(1, 2).reshape(B * S, 1, Hkv, D)
    vc = value.transpose(1, 2).reshape(B * S, 1, Hkv, D)
    plan = _tree_plan(meta, Hq, Hkv, D, query.dtype, key.dtype, scaling, query.device)
    out = plan.run(q, kc, vc)
    full = query.new_zeros(B * Tm, Hq, D)
    full.index_copy_(0, meta["q_index"], out.to(full.dtype))
    return full.view(B, Tm, Hq, D), None


def _tree_plan(meta: dict, num_qo_heads: int, num_kv_heads: int, head_dim: int, dtype, kv_dtype,
               scale, device):
    """The forward's :class:`~specpack.kernels.tree_attention.TreeAttentionPlan`
    for these shapes, made by the first layer that asks and cached in the
    per-forward ``meta`` (``meta["plans"]``): FlashInfer plans once per forward
    and every later layer only runs."""
    from specpack.kernels.tree_attention import TreeAttentionPlan

    plans = meta.setdefault("plans", {})
    key = (num_qo_heads, num_kv_heads, head_dim, dtype, kv_dtype, scale)
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = TreeAttentionPlan(
            meta["table"], meta["prefix_lens"], meta["cu_tree"], meta["bits"],
            num_qo_heads=num_qo_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
            page_size=1, dtype=dtype, kv_dtype=kv_dtype, device=device, scale=scale,
            backend=meta["backend"])
    return plan


def _register_attention() -> None:
    from transformers import AttentionInterface

    if TREE_ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(TREE_ATTENTION_NAME, _tree_attention_forward)


@contextmanager
def _attn_implementation(model, name: str):
    cfg = model.config
    old = cfg._attn_implementation
    cfg._attn_implementation = name
    try:
        yield
    finally:
        cfg._attn_implementation = old


def _tree_meta(L: list[int], T: list[int], bits: torch.Tensor, backend: str, device) -> dict:
    """Block table (page size 1) and packed query index for the padded batch;
    ``plans`` is filled by the first layer of the forward (:func:`_tree_plan`)."""
    B, Lm, Tm = len(L), max(L), max(T)
    S = Lm + Tm
    table = np.zeros((B, S), np.int32)
    q_index = []
    for b in range(B):
        base = b * S
        table[b, :L[b]] = base + np.arange(L[b])
        table[b, L[b]:L[b] + T[b]] = base + Lm + np.arange(T[b])
        q_index.extend(range(b * Tm, b * Tm + T[b]))
    return {"table": torch.as_tensor(table, device=device),
            "q_index": torch.as_tensor(q_index, dtype=torch.long, device=device),
            "prefix_lens": torch.as_tensor(L, dtype=torch.int32, device=device),
            "cu_tree": torch.as_tensor(np.concatenate([[0], np.cumsum(T)]), dtype=torch.int32,
                                       device=device),
            "bits": bits.to(device), "backend": backend, "plans": {}}


class CachedLM:
    """Per-request KV caches around a ``transformers`` causal LM (eval mode)."""

    def __init__(self, model, max_requests: int = 1024, tree_attention: str | None = None):
        """``tree_attention``: None = dense 4D-mask SDPA for every forward;
        a backend name (``auto``, ``torch``, ``triton``, ``flashinfer``) = run
        forwards with ``tree=True`` through :func:`specpack.kernels.tree_attention`."""
        self.model = model.eval()
        self.dtype = next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.max_requests = max_requests
        # key -> list over layers of (K, V), each [1, H_kv, L, D]
        self.kv: dict[Hashable, list[tuple[torch.Tensor, torch.Tensor]] | None] = {}
        self.tokens: dict[Hashable, list[int]] = {}
        self._pending: dict[Hashable, tuple[list, list[int]]] = {}
        self.tree_attention = tree_attention
        if tree_attention is not None:
            _register_attention()

    # ------------------------------------------------------------ bookkeeping
    def length(self, key: Hashable) -> int:
        return len(self.tokens.get(key, ()))

    def cached_tokens(self, key: Hashable) -> list[int]:
        return self.tokens.get(key, [])

    def release(self, key: Hashable) -> None:
        self.kv.pop(key, None)
        self.tokens.pop(key, None)
        self._pending.pop(key, None)

    def truncate(self, key: Hashable, n: int) -> None:
        """Keep the first ``n`` cached tokens."""
        if self.length(key) <= n:
            return
        self.tokens[key] = self.tokens[key][:n]
        kv = self.kv.get(key)
        if kv is not None:
            self.kv[key] = [(k[:, :, :n], v[:, :, :n]) for k, v in kv]

    def layer_kv(self, key: Hashable) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return self.kv.get(key) or []

    # ------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, keys: Sequence[Hashable], new_tokens: Sequence[Sequence[int]],
                positions: Sequence[Sequence[int]], new_mask: Sequence[np.ndarray],
                past_visible: Sequence[np.ndarray | None] | None = None,
                tree_bits: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Run one ragged batch; return float32 logits ``[T_b, V]`` per request.

        ``tree_bits`` (``new_mask`` bit-packed, rows concatenated, prefix fully
        visible) routes attention through the tree-attention kernels when they
        are enabled; the dense 4D mask is then not built at all."""
        B = len(keys)
        T = [len(t) for t in new_tokens]
        Tm = max(T)
        L = [self.length(k) for k in keys]
        Lm = max(L)
        ids = torch.zeros((B, Tm), dtype=torch.long, device=self.device)
        pos = torch.zeros((B, Tm), dtype=torch.long, device=self.device)
        for b in range(B):
            ids[b, :T[b]] = torch.as_tensor(list(new_tokens[b]), dtype=torch.long)
            pos[b, :T[b]] = torch.as_tensor(list(positions[b]), dtype=torch.long)
        use_tree = tree_bits is not None and self.tree_attention is not None and past_visible is None
        mask = None if use_tree else self._dense_mask(T, L, new_mask, past_visible)

        past = None
        if Lm:
            n_layers = len(next(self.kv[k] for k in keys if self.kv.get(k)))
            layers = []
            for layer in range(n_layers):
                ks, vs = [], []
                for b, key in enumerate(keys):
                    kv = self.kv.get(key)
                    if kv:
                        k, v = kv[layer]
                    else:
                        ref_k, _ = next(self.kv[kk] for kk in keys if self.kv.get(kk))[layer]
                        k = v = ref_k.new_zeros(ref_k.shape[:2] + (0, ref_k.shape[3]))
                    pad = Lm - k.shape[2]
                    if pad:
                        k = torch.nn.functional.pad(k, (0, 0, 0, pad))
                        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
                    ks.append(k)
                    vs.append(v)
                layers.append((torch.cat(ks), torch.cat(vs)))
            from transformers import DynamicCache

            past = DynamicCache(ddp_cache_data=layers)
        if use_tree:
            meta = _tree_meta(L, T, tree_bits, self.tree_attention, self.device)
            with _attn_implementation(self.model, TREE_ATTENTION_NAME):
                out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask,
                                 past_key_values=past, use_cache=True, specpack_tree=meta)
        else:
            out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask,
                             past_key_values=past, use_cache=True)
        cache = out.past_key_values
        new_layers = [(layer.keys[:, :, Lm:], layer.values[:, :, Lm:]) for layer in cache.layers]
        logits = out.logits.float()
        result = []
        for b, key in enumerate(keys):
            tb = T[b]
            self._pending[key] = (
                [(k[b:b + 1, :, :tb], v[b:b + 1, :, :tb]) for k, v in new_layers],
                list(new_tokens[b]),
            )
            result.append(logits[b, :tb])
        return result

    def _dense_mask(self, T, L, new_mask, past_visible) -> torch.Tensor:
        """``[B, 1, T_max, L_max + T_max]`` additive mask for transformers' SDPA."""
        B, Tm, Lm = len(T), max(T), max(L)
        allow = torch.zeros((B, Tm, Lm + Tm), dtype=torch.bool)
        for b in range(B):
            tb, lb = T[b], L[b]
            if lb:
                pv = None if past_visible is None else past_visible[b]
                allow[b, :tb, :lb] = True if pv is None else torch.as_tensor(pv, dtype=torch.bool)
            allow[b, :tb, Lm:Lm + tb] = torch.as_tensor(np.asarray(new_mask[b], dtype=bool))
            for t in range(tb, Tm):  # padded query rows: attend to themselves only
                allow[b, t, Lm + t] = True
        neg = torch.finfo(self.dtype).min
        mask = torch.zeros(allow.shape, dtype=self.dtype).masked_fill(~allow, neg)
        return mask[:, None].to(self.device)

    def commit(self, key: Hashable, keep: Sequence[int] | None = None) -> None:
        """Append pending entries ``keep`` (default: all) of the last forward."""
        layers, toks = self._pending.pop(key)
        if keep is None:
            keep = range(len(toks))
        keep = list(keep)
        if not keep:
            return
        idx = torch.as_tensor(keep, dtype=torch.long, device=self.device)
        old = self.kv.get(key)
        merged = []
        for layer, (k, v) in enumerate(layers):
            k, v = k.index_select(2, idx), v.index_select(2, idx)
            if old:
                k = torch.cat([old[layer][0], k], dim=2)
                v = torch.cat([old[layer][1], v], dim=2)
            merged.append((k, v))
        self.kv[key] = merged
        self.tokens.setdefault(key, []).extend(toks[i] for i in keep)

    def extend(self, keys: Sequence[Hashable], chunks: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Append token chunks causally (prefill / catch-up); returns their logits."""
        keys = [k for k, c in zip(keys, chunks) if len(c)]
        chunks = [c for c in chunks if len(c)]
        if not keys:
            return []
        positions = [range(self.length(k), self.length(k) + len(c)) for k, c in zip(keys, chunks)]
        masks = [np.tril(np.ones((len(c), len(c)), dtype=bool)) for c in chunks]
        logits = self.forward(keys, chunks, positions, masks)
        for k in keys:
            self.commit(k)
        return logits
