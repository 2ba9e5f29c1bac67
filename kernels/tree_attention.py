"""Tree attention for verifying draft trees: Triton, FlashInfer, torch reference.

Each request ``b`` has a committed prefix of ``P_b`` tokens and a tree block
of ``T_b`` tokens (root + draft nodes) whose keys/values are already written
to the KV cache right after the prefix (logical positions ``P_b .. P_b+T_b-1``).
Tree token ``i`` attends to the whole prefix and to block tokens ``j`` whose
bit is set in its row of the bit-packed tree mask (ancestors and itself):

    out_i = softmax(q_i K^T / sqrt(d) + mask_i) V

Inputs (packed over requests, ``N = sum T_b``):

* ``q``: ``[N, Hq, D]``; block of request ``b`` at rows ``cu_tree[b]:cu_tree[b+1]``;
* KV cache, paged: ``k_cache``/``v_cache`` ``[num_pages, page_size, Hkv, D]``
  with ``block_table`` ``[B, max_pages]`` (int32); contiguous caches
  ``[B, L, Hkv, D]`` are the special case of one page per request
  (:func:`contiguous_as_paged`);
* ``prefix_lens`` ``[B]``, ``cu_tree`` ``[B + 1]`` (int32), ``tree_bits``
  ``[N, W]`` int32 from :func:`specpack.kernels.tree_mask.build_tree_batch`.

Grouped-query attention: query head ``h`` reads KV head ``h // (Hq / Hkv)``.

Incremental blocks (drafting a tree level by level): with ``block_lens``
``[B]`` the block of request ``b`` holds ``K_b = block_lens[b]`` tokens already
written to the cache and only its *last* ``T_b <= K_b`` tokens are queries
(``cu_tree`` then indexes the query rows, ``tree_bits`` has one row per query
over the ``K_b`` block columns). Query row ``r`` of request ``b`` is block
token ``K_b - T_b + r``; without ``block_lens``, ``K_b = T_b``.

Backends: ``triton`` (flash-attention style: online softmax over prefix tiles
without any mask, then the tree tiles with the bit mask; runs on CPU tensors
under ``TRITON_INTERPRET=1``), ``flashinfer`` (paged prefill wrapper with a
custom mask, when ``flashinfer`` imports and tensors are on CUDA) and
``torch`` (SDPA with a dense mask; the reference every backend is tested
against). ``backend="auto"`` (or ``SPECPACK_TREE_ATTENTION_BACKEND``) picks
flashinfer > triton > torch by availability.

Plan once per step, run once per layer: every layer of a forward shares the
step's metadata, so :class:`TreeAttentionPlan` does the per-step work once
(backend choice, metadata on the device; for FlashInfer the wrapper's
``plan()``, i.e. page indices and the custom mask) and its ``run(q, k, v)``
is called per layer. :func:`tree_attention` is the one-shot form
(plan + one run). FlashInfer's inputs (:func:`flashinfer_plan_inputs`), for
request ``b`` with ``kv_b = P_b + K_b`` tokens on ``n_b = ceil(kv_b / page)``
pages:

    qo_indptr       = cu_tree
    paged_kv_indptr = [0, cumsum(n_b)],  paged_kv_indices = block_table[b, :n_b] concatenated
    last_page_len_b = kv_b - (n_b - 1) * page              (in 1..page)
    custom_mask     = concat_b flatten_row_major(M_b),  M_b [T_b, kv_b] bool,
                      M_b[i, c] = c < P_b  or  bit (c - P_b) of tree row i

FlashInfer packs ``custom_mask`` itself (``segment_packbits``, little-endian
bit order, each request's segment padded to a whole byte) and derives the
segment offsets ``cumsum(T_b * kv_b)`` from the paged metadata; passing a
pre-packed mask instead would need byte offsets that ``plan()`` does not
compute from them.
"""

from __future__ import annotations

import math
import os

import torch

from specpack.kernels.tree_mask import unpack_bits

BACKENDS = ("auto", "torch", "triton", "flashinfer")


def contiguous_as_paged(k: torch.Tensor, v: torch.Tensor):
    """``[B, L, Hkv, D]`` caches -> (k, v, block_table) with one page per request."""
    B = k.shape[0]
    table = torch.arange(B, dtype=torch.int32, device=k.device)[:, None]
    return k, v, table


def _triton_available(device: torch.device) -> bool:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False  # decide before importing triton: its import is slow
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _flashinfer_available(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends(device: torch.device) -> list[str]:
    out = ["torch"]
    if _triton_available(device):
        out.append("triton")
    if _flashinfer_available(device):
        out.append("flashinfer")
    return out


def select_backend(device: torch.device, backend: str = "auto") -> str:
    backend = os.environ.get("SPECPACK_TREE_ATTENTION_BACKEND", backend) if backend == "auto" else backend
    if backend not in BACKENDS:
        raise ValueError(f"tree_attention backend {backend!r}: allowed values: {', '.join(BACKENDS)}")
    avail = available_backends(device)
    if backend == "auto":
        # never auto-select the Triton *interpreter* on CPU: it exists for tests
        order = ("flashinfer", "triton", "torch") if device.type == "cuda" else ("torch",)
        for b in order:
            if b in avail:
                return b
    if backend not in avail:
        raise ValueError(f"tree_attention backend {backend!r} is not available on {device} "
                         f"(available: {', '.join(avail)})")
    return backend


def tree_attention(q, k_cache, v_cache, block_table, prefix_lens, cu_tree, tree_bits, *,
                   scale: float | None = None, backend: str = "auto",
                   block_lens: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of every tree token over its prefix and tree ancestors; ``[N, Hq, D]``.

    One-shot form of :class:`TreeAttentionPlan` (plans, runs once): for a
    multi-layer forward plan once and call ``run`` per layer instead."""
    if q.dim() != 3 or k_cache.dim() != 4:
        raise ValueError("q must be [N, Hq, D] and k_cache [pages, page_size, Hkv, D]")
    plan = TreeAttentionPlan(block_table, prefix_lens, cu_tree, tree_bits,
                             num_qo_heads=q.shape[1], num_kv_heads=k_cache.shape[2],
                             head_dim=q.shape[2], page_size=k_cache.shape[1], dtype=q.dtype,
                             kv_dtype=k_cache.dtype, device=q.device, scale=scale,
                             backend=backend, block_lens=block_lens)
    return plan.run(q, k_cache, v_cache)


class TreeAttentionPlan:
    """One step's tree attention, planned once and run for every layer.

    Built from the step's metadata (``block_table``, ``prefix_lens``,
    ``cu_tree``, ``tree_bits``, see the module docstring) and the shapes every
    layer shares; ``run(q, k_cache, v_cache)`` then computes one layer. For
    ``flashinfer`` the plan owns a ``BatchPrefillWithPagedKVCacheWrapper``
    whose ``plan()`` ran here, once (its float workspace is shared per device:
    runs on one stream are sequential); ``torch``/``triton`` keep the metadata
    on the device, converted once.
    """

    def __init__(self, block_table, prefix_lens, cu_tree, tree_bits, *, num_qo_heads: int,
                 num_kv_heads: int, head_dim: int, page_size: int, dtype: torch.dtype,
                 device, scale: float | None = None, backend: str = "auto",
                 kv_dtype: torch.dtype | None = None, block_lens: torch.Tensor | None = None):
        if num_qo_heads % num_kv_heads:
            raise ValueError(f"query heads ({num_qo_heads}) must be a multiple of KV heads "
                             f"({num_kv_heads})")
        device = torch.device(device)
        self.backend = select_backend(device, backend)
        self.num_qo_heads, self.num_kv_heads = num_qo_heads, num_kv_heads
        self.head_dim, self.page_size = head_dim, page_size
        self.dtype, self.kv_dtype = dtype, dtype if kv_dtype is None else kv_dtype
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        self.block_table = block_table.to(device, torch.int32).contiguous()
        self.prefix_lens = prefix_lens.to(device, torch.int32).contiguous()
        self.cu_tree = cu_tree.to(device, torch.int32).contiguous()
        self.tree_bits = tree_bits.to(device, torch.int32).contiguous()
        sizes = cu_tree[1:] - cu_tree[:-1]
        if block_lens is None:
            block_lens = sizes
        elif block_lens.shape != sizes.shape or bool((block_lens.cpu() < sizes.cpu()).any()):
            raise ValueError("block_lens must have one entry per request, each >= its query rows")
        self.block_lens = block_lens.to(device, torch.int32).contiguous()
        self.max_tree = int(sizes.max()) if sizes.numel() else 0
        self._wrapper = None
        if self.backend == "flashinfer":
            self._wrapper = self._plan_flashinfer(device)

    def _plan_flashinfer(self, device: torch.device):
        import flashinfer

        inp = flashinfer_plan_inputs(self.block_table, self.prefix_lens, self.cu_tree,
                                     self.tree_bits, self.page_size, self.block_lens)
        wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_flashinfer_workspace(device),
                                                                 kv_layout="NHD")
        wrapper.plan(inp["qo_indptr"], inp["paged_kv_indptr"], inp["paged_kv_indices"],
                     inp["paged_kv_last_page_len"], self.num_qo_heads, self.num_kv_heads,
                     self.head_dim, self.page_size, custom_mask=inp["custom_mask"],
                     causal=False, sm_scale=self.scale, q_data_type=self.dtype,
                     kv_data_type=self.kv_dtype)
        return wrapper

    def run(self, q, k_cache, v_cache) -> torch.Tensor:
        """One layer: ``q`` ``[N, Hq, D]``, caches ``[pages, page_size, Hkv, D]``;
        returns ``[N, Hq, D]``."""
        want_q = (self.num_qo_heads, self.head_dim)
        want_kv = (self.page_size, self.num_kv_heads, self.head_dim)
        if (q.dim() != 3 or tuple(q.shape[1:]) != want_q or k_cache.dim() != 4
                or tuple(k_cache.shape[1:]) != want_kv or v_cache.shape != k_cache.shape):
            raise ValueError(f"planned for q [N, {want_q[0]}, {want_q[1]}] and caches "
                             f"[pages, {', '.join(map(str, want_kv))}]; got q {tuple(q.shape)}, "
                             f"k {tuple(k_cache.shape)}, v {tuple(v_cache.shape)}")
        if self.backend == "flashinfer":
            if q.dtype != self.dtype or k_cache.dtype != self.kv_dtype:
                raise ValueError(f"planned for q {self.dtype} / kv {self.kv_dtype}; got q "
                                 f"{q.dtype} / kv {k_cache.dtype}")
            return self._wrapper.run(q, (k_cache, v_cache))
        args = (q, k_cache, v_cache, self.block_table, self.prefix_lens, self.cu_tree,
                self.tree_bits, self.scale)
        if self.backend == "triton":
            return _triton_tree_attention(*args, max_tree=self.max_tree, block_lens=self.block_lens)
        return reference_tree_attention(*args, block_lens=self.block_lens)


# --------------------------------------------------------------------- reference
def reference_tree_attention(q, k_cache, v_cache, block_table, prefix_lens, cu_tree, tree_bits,
                             scale: float | None = None,
                             block_lens: torch.Tensor | None = None) -> torch.Tensor:
    """torch SDPA with a dense boolean mask over the whole (padded) batch.

    Keys/values of every request are gathered through the block table into
    ``[B, L_max, Hkv, D]`` (grouped-query heads are not repeated: SDPA's
    ``enable_gqa``); the mask is ``[B, T_max, L_max]``: prefix columns visible,
    block columns from the unpacked bit mask, padding hidden (padded query
    rows see column 0 only and are dropped).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dev = q.device
    Hq, Hkv, D = q.shape[1], k_cache.shape[2], q.shape[2]
    page_size = k_cache.shape[1]
    P = prefix_lens.to(dev, torch.long)
    cu = cu_tree.to(dev, torch.long)
    T = cu[1:] - cu[:-1]
    K = T if block_lens is None else block_lens.to(dev, torch.long)
    B = P.shape[0]
    if B == 0 or q.shape[0] == 0:
        return torch.empty_like(q)
    Lm, Tm, Km = int((P + K).max()), int(T.max()), int(K.max())
    pos = torch.arange(Lm, device=dev)
    page = (pos // page_size).clamp(max=block_table.shape[1] - 1)
    phys = block_table.to(dev, torch.long)[:, page]                      # [B, Lm]
    slot = (pos % page_size).expand(B, Lm)
    k = k_cache[phys, slot]                                               # [B, Lm, Hkv, D]
    v = v_cache[phys, slot]
    # packed query row -> (request, row among its queries)
    req = torch.repeat_interleave(torch.arange(B, device=dev), T)
    row = torch.arange(q.shape[0], device=dev) - cu[req]
    qp = q.new_zeros(B, Tm, Hq, D)
    qp[req, row] = q
    mask = torch.zeros(B, Tm, Lm, dtype=torch.bool, device=dev)
    mask[:, :, 0] = True                                                  # padded rows: col 0
    bits = unpack_bits(tree_bits.to(dev), Km)                             # [N, Km]
    cols = P[req][:, None] + torch.arange(Km, device=dev)[None, :]        # [N, Km]
    ok = torch.arange(Km, device=dev)[None, :] < K[req][:, None]
    tree = torch.zeros(q.shape[0], Lm, dtype=torch.bool, device=dev)
    r_idx, j_idx = ok.nonzero(as_tuple=True)          # only real block columns
    tree[r_idx, cols[r_idx, j_idx]] = bits[r_idx, j_idx]
    mask[req, row] = (pos[None, :] < P[req][:, None]) | tree
    o = torch.nn.functional.scaled_dot_product_attention(
        qp.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask[:, None], scale=scale, enable_gqa=Hq != Hkv)       # [B, Hq, Tm, D]
    return o.transpose(1, 2)[req, row]


# --------------------------------------------------------------------- triton
_KERNEL = None


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(Q, K, V, Out, Table, Prefix, Cu, Bits, BlockLen,
               s_qn, s_qh, s_kp, s_ks, s_kh, s_vp, s_vs, s_vh, s_on, s_oh, s_tb, s_bits,
               page_size, sm_scale,
               GROUP: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
        b = tl.program_id(0)
        mblk = tl.program_id(1)
        h = tl.program_id(2)
        q0 = tl.load(Cu + b)
        T = tl.load(Cu + b + 1) - q0
        if mblk * BLOCK_M < T:
            P = tl.load(Prefix + b)
            KB = tl.load(BlockLen + b)
            kvh = h // GROUP
            offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
            m_ok = offs_m < T
            offs_d = tl.arange(0, HEAD_D)
            q = tl.load(Q + (q0 + offs_m)[:, None] * s_qn + h * s_qh + offs_d[None, :],
                        mask=m_ok[:, None], other=0.0)
            m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
            # prefix tiles: every tree token sees the whole prefix, no mask
            for start in range(0, P, BLOCK_N):
                offs_n = start + tl.arange(0, BLOCK_N)
                n_ok = offs_n < P
                phys = tl.load(Table + b * s_tb + offs_n // page_size, mask=n_ok, other=0)
                slot = offs_n % page_size
                k = tl.load(K + phys[:, None] * s_kp + slot[:, None] * s_ks + kvh * s_kh
                            + offs_d[None, :], mask=n_ok[:, None], other=0.0)
                v = tl.load(V + phys[:, None] * s_vp + slot[:, None] * s_vs + kvh * s_vh
                            + offs_d[None, :], mask=n_ok[:, None], other=0.0)
                s = tl.dot(q, tl.trans(k)) * sm_scale
                s = tl.where(n_ok[None, :], s, -1.0e30)
                m_new = tl.maximum(m_i, tl.max(s, 1))
                p = tl.exp(s - m_new[:, None])
                alpha = tl.exp(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                m_i = m_new
            # block tiles: bit mask of ancestors
            for start in range(0, KB, BLOCK_N):
                offs_j = start + tl.arange(0, BLOCK_N)
                j_ok = offs_j < KB
                pos = P + offs_j
                phys = tl.load(Table + b * s_tb + pos // page_size, mask=j_ok, other=0)
                slot = pos % page_size
                k = tl.load(K + phys[:, None] * s_kp + slot[:, None] * s_ks + kvh * s_kh
                            + offs_d[None, :], mask=j_ok[:, None], other=0.0)
                v = tl.load(V + phys[:, None] * s_vp + slot[:, None] * s_vs + kvh * s_vh
                            + offs_d[None, :], mask=j_ok[:, None], other=0.0)
                words = tl.load(Bits + (q0 + offs_m)[:, None] * s_bits + (offs_j // 32)[None, :],
                                mask=m_ok[:, None] & j_ok[None, :], other=0)
                bit = (words >> (offs_j % 32)[None, :]) & 1
                allowed = (bit != 0) & m_ok[:, None] & j_ok[None, :]
                s = tl.dot(q, tl.trans(k)) * sm_scale
                s = tl.where(allowed, s, -1.0e30)
                m_new = tl.maximum(m_i, tl.max(s, 1))
                p = tl.exp(s - m_new[:, None])
                p = tl.where(allowed, p, 0.0)
                alpha = tl.exp(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                m_i = m_new
            out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
            tl.store(Out + (q0 + offs_m)[:, None] * s_on + h * s_oh + offs_d[None, :],
                     out.to(Out.dtype.element_ty), mask=m_ok[:, None])

    return kernel


def _triton_tree_attention(q, k_cache, v_cache, block_table, prefix_lens, cu_tree, tree_bits,
                           scale: float, block_m: int = 16, block_n: int = 64,
                           max_tree: int | None = None,
                           block_lens: torch.Tensor | None = None) -> torch.Tensor:
    import triton

    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _build_kernel()
    D = q.shape[-1]
    if D not in (16, 32, 64, 128, 256):
        raise ValueError(f"triton tree_attention supports head dims 16-256 (powers of 2), got {D}")
    q = q.contiguous()
    out = torch.empty_like(q)
    dev = q.device
    cu = cu_tree.to(dev, torch.int32).contiguous()
    prefix = prefix_lens.to(dev, torch.int32).contiguous()
    table = block_table.to(dev, torch.int32).contiguous()
    bits = tree_bits.to(dev, torch.int32).contiguous()
    B = prefix.shape[0]
    blens = (cu[1:] - cu[:-1] if block_lens is None else block_lens).to(dev, torch.int32).contiguous()
    if max_tree is None:
        max_tree = int((cu_tree[1:] - cu_tree[:-1]).max()) if B else 0
    grid = (B, triton.cdiv(max(max_tree, 1), block_m), q.shape[1])
    _KERNEL[grid](q, k_cache, v_cache, out, table, prefix, cu, bits, blens,
                  q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                  v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
                  out.stride(0), out.stride(1), table.stride(0), bits.stride(0),
                  k_cache.shape[1], scale,
                  GROUP=q.shape[1] // k_cache.shape[2], HEAD_D=D, BLOCK_M=block_m, BLOCK_N=block_n)
    return out


# --------------------------------------------------------------------- flashinfer
_FI_WORKSPACE: dict = {}


def _flashinfer_workspace(device: torch.device) -> torch.Tensor:
    """128 MiB float workspace per device, shared by every plan (scratch of ``run``)."""
    ws = _FI_WORKSPACE.get(device)
    if ws is None:
        ws = _FI_WORKSPACE[device] = torch.empty(128 * 1024 * 1024, dtype=torch.uint8,
                                                 device=device)
    return ws


def flashinfer_plan_inputs(block_table, prefix_lens, cu_tree, tree_bits, page_size: int,
                           block_lens: torch.Tensor | None = None) -> dict:
    """Arguments of FlashInfer's paged-prefill ``plan()`` (module docstring), vectorised.

    Returns int32 ``qo_indptr``, ``paged_kv_indptr``, ``paged_kv_indices``,
    ``paged_kv_last_page_len``, the flat bool ``custom_mask`` and its segment
    offsets ``mask_indptr`` (``cumsum(T_b * kv_b)``; FlashInfer derives the same
    from the paged metadata), all on ``block_table``'s device."""
    dev = block_table.device
    P = prefix_lens.to(dev, torch.long)
    cu = cu_tree.to(dev, torch.long)
    T = cu[1:] - cu[:-1]
    K = T if block_lens is None else block_lens.to(dev, torch.long)
    kv = P + K
    pages = (kv + page_size - 1) // page_size
    B = P.shape[0]
    if B and int(pages.max()) > block_table.shape[1]:
        raise ValueError(f"block_table has {block_table.shape[1]} pages per request, "
                         f"a request needs {int(pages.max())}")
    keep = torch.arange(block_table.shape[1], device=dev)[None, :] < pages[:, None]
    indices = block_table.to(torch.int32)[keep]         # row-major: request by request

    def indptr(x):
        return torch.cat([x.new_zeros(1), x.cumsum(0)]).to(torch.int32)

    N = int(cu[-1]) if B else 0
    if N:
        req = torch.repeat_interleave(torch.arange(B, device=dev), T)        # [N]
        col = torch.arange(int(kv.max()), device=dev)[None, :]               # [1, K]
        j = col - P[req][:, None]                                            # block column
        Km = int(K.max())
        bits = unpack_bits(tree_bits.to(dev), Km).gather(1, j.clamp(0, Km - 1))
        vis = (j < 0) | bits                                                 # [N, K]
        custom_mask = vis[col < kv[req][:, None]]     # row i of request b: its kv_b columns
    else:
        custom_mask = torch.zeros(0, dtype=torch.bool, device=dev)
    return {"qo_indptr": cu.to(torch.int32),
            "paged_kv_indptr": indptr(pages),
            "paged_kv_indices": indices,
            "paged_kv_last_page_len": (kv - (pages - 1) * page_size).to(torch.int32),
            "custom_mask": custom_mask,
            "mask_indptr": indptr(T * kv)}
