"""Triton tree attention (interpreter mode on CPU) against the torch SDPA
reference, the vectorised mask builder against Draft.ancestor_mask, and the
FlashInfer plan inputs (layout checked on CPU; the wrapper replaced by a fake
that computes what FlashInfer documents for them).

Tolerance: max abs error <= 2e-5 in float32 (inputs ~N(0, 1)). Random cases
are seeded by ``zlib.crc32(name)`` (stable across processes, unlike
``hash``); failure messages name the seed."""

import os
import sys
import types
import zlib

# Triton reads this when it is imported (here, at collection). tests/conftest.py
# removes it again for every test outside tests/kernels, so vLLM subprocesses
# and the rest of the suite never see it.
os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import specpack.kernels.tree_attention as ta  # noqa: E402
from specpack.draft import Draft  # noqa: E402
from specpack.kernels.tree_attention import (TreeAttentionPlan, available_backends,  # noqa: E402
                                             contiguous_as_paged, flashinfer_plan_inputs,
                                             reference_tree_attention, select_backend,
                                             tree_attention)
from specpack.kernels.tree_mask import build_tree_batch, unpack_bits  # noqa: E402

pytest.importorskip("triton")
ATOL = 2e-5


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    """Run Triton kernels on CPU tensors in these tests."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def random_draft(rng, n, kind="random"):
    if n == 0:
        return Draft.empty()
    if kind == "chain":
        return Draft.chain(rng.integers(0, 50, n))
    if kind == "wide":
        return Draft(rng.integers(0, 50, n), [-1] * n)
    return Draft(rng.integers(0, 50, n), [-1] + [int(rng.integers(-1, i)) for i in range(1, n)])


def test_mask_builder_matches_ancestor_masks():
    rng = np.random.default_rng(0)
    drafts = [random_draft(rng, int(n), k) for n, k in
              zip(rng.integers(0, 70, 30), ["random", "chain", "wide"] * 10)]
    tb = build_tree_batch(drafts)
    cu = tb.cu_tree.tolist()
    for b, d in enumerate(drafts):
        n = len(d) + 1
        m = np.zeros((n, n), bool)
        m[:, 0] = True
        if len(d):
            m[1:, 1:] = d.ancestor_mask()
            assert tb.depths[cu[b] + 1:cu[b + 1]].tolist() == d.depths.tolist()
        assert (tb.dense_mask[cu[b]:cu[b + 1], :n].numpy() == m).all()
        assert not tb.dense_mask[cu[b]:cu[b + 1], n:].any()
    assert torch.equal(unpack_bits(tb.bits, tb.dense_mask.shape[1]), tb.dense_mask)


def make_case(rng, drafts, prefixes, Hq, Hkv, D, page_size, dtype=torch.float32):
    tb = build_tree_batch(drafts)
    P = torch.tensor(prefixes, dtype=torch.int32)
    kv = (P + tb.tree_sizes).tolist()
    pages = [(n + page_size - 1) // page_size for n in kv]
    total = sum(pages) + 3
    perm = torch.as_tensor(rng.permutation(total), dtype=torch.int32)  # scattered pages
    table = torch.zeros((len(drafts), max(pages)), dtype=torch.int32)
    c = 0
    for b, n in enumerate(pages):
        table[b, :n] = perm[c:c + n]
        c += n
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    k = torch.randn(total, page_size, Hkv, D, generator=g, dtype=dtype)
    v = torch.randn(total, page_size, Hkv, D, generator=g, dtype=dtype)
    q = torch.randn(int(tb.tree_sizes.sum()), Hq, D, generator=g, dtype=dtype)
    return q, k, v, table, P, tb


CASES = {
    # name: (tree sizes and kinds, prefixes, Hq, Hkv, D, page_size)
    "one-node-trees-no-prefix": ([(0, "random"), (0, "random")], [0, 0], 2, 2, 64, 16),
    "chain-gqa-page-crossing": ([(20, "chain"), (7, "chain")], [33, 16], 8, 2, 64, 16),
    "full-width-tree": ([(63, "wide")], [50], 4, 4, 64, 16),
    "ragged-random-d128": ([(5, "random"), (0, "random"), (40, "random")], [0, 17, 70],
                           4, 1, 128, 32),
    "long-prefix-many-tiles": ([(12, "random"), (3, "random")], [300, 129], 2, 1, 64, 16),
    # the longest KV belongs to the request with the smaller tree (padding edge)
    "longest-kv-small-tree": ([(2, "random"), (30, "wide")], [90, 5], 2, 2, 64, 16),
}


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


def build_case(name):
    seed = seed_of(name)
    rng = np.random.default_rng(seed)
    trees, prefixes, Hq, Hkv, D, ps = CASES[name]
    drafts = [random_draft(rng, n, k) for n, k in trees]
    return seed, rng, make_case(rng, drafts, prefixes, Hq, Hkv, D, ps)


@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_reference(name):
    seed, _, (q, k, v, table, P, tb) = build_case(name)
    ref = reference_tree_attention(q, k, v, table, P, tb.cu_tree, tb.bits)
    out = tree_attention(q, k, v, table, P, tb.cu_tree, tb.bits, backend="triton")
    err = (out - ref).abs().max().item()
    assert err <= ATOL, f"case {name!r} (seed {seed}): max abs error {err:.2e} > {ATOL:.0e}"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_plan_once_run_per_layer(backend):
    """One plan serves several layers (different q/k/v, same metadata) and
    gives what the one-shot call gives for each."""
    seed, rng, (q, k, v, table, P, tb) = build_case("chain-gqa-page-crossing")
    plan = TreeAttentionPlan(table, P, tb.cu_tree, tb.bits, num_qo_heads=q.shape[1],
                             num_kv_heads=k.shape[2], head_dim=q.shape[2],
                             page_size=k.shape[1], dtype=q.dtype, device=q.device,
                             backend=backend)
    assert plan.backend == backend
    g = torch.Generator().manual_seed(seed)
    for layer in range(2):
        q2, k2, v2 = (torch.randn(x.shape, generator=g) for x in (q, k, v))
        out = plan.run(q2, k2, v2)
        ref = reference_tree_attention(q2, k2, v2, table, P, tb.cu_tree, tb.bits)
        err = (out - ref).abs().max().item()
        assert err <= ATOL, f"layer {layer} (seed {seed}): max abs error {err:.2e}"
    with pytest.raises(ValueError, match="planned for"):
        plan.run(q[:, :1], k, v)


def test_batched_reference_equals_per_request_sdpa():
    """The batched reference against a plain per-request SDPA loop."""
    rng = np.random.default_rng(9)
    drafts = [random_draft(rng, 2), random_draft(rng, 30, "wide"), Draft.empty()]
    q, k, v, table, P, tb = make_case(rng, drafts, [90, 5, 0], 4, 2, 64, 16)
    ref = reference_tree_attention(q, k, v, table, P, tb.cu_tree, tb.bits)
    cu = tb.cu_tree.tolist()
    for b, p in enumerate(P.tolist()):
        s, e = cu[b], cu[b + 1]
        n = p + e - s
        pos = torch.arange(n)
        kk = k[table[b][pos // 16].long(), pos % 16].repeat_interleave(2, dim=1)
        vv = v[table[b][pos // 16].long(), pos % 16].repeat_interleave(2, dim=1)
        m = torch.ones(e - s, n, dtype=torch.bool)
        m[:, p:] = tb.dense_mask[s:e, :e - s]
        o = torch.nn.functional.scaled_dot_product_attention(
            q[s:e].transpose(0, 1), kk.transpose(0, 1), vv.transpose(0, 1), attn_mask=m)
        assert (o.transpose(0, 1) - ref[s:e]).abs().max().item() <= 1e-5


def test_contiguous_layout_equals_paged():
    rng = np.random.default_rng(5)
    drafts = [random_draft(rng, 9), random_draft(rng, 4, "chain")]
    tb = build_tree_batch(drafts)
    P = torch.tensor([21, 3], dtype=torch.int32)
    L = int((P + tb.tree_sizes).max())
    k = torch.randn(2, L, 2, 64)
    v = torch.randn(2, L, 2, 64)
    q = torch.randn(int(tb.tree_sizes.sum()), 4, 64)
    kc, vc, table = contiguous_as_paged(k, v)
    out = tree_attention(q, kc, vc, table, P, tb.cu_tree, tb.bits, backend="triton")
    # reference computed by hand for request 1, node rows: prefix + visible tree columns
    ref = reference_tree_attention(q, kc, vc, table, P, tb.cu_tree, tb.bits)
    assert (out - ref).abs().max().item() <= ATOL
    s, e = tb.cu_tree[1].item(), tb.cu_tree[2].item()
    T = e - s
    keys = torch.cat([k[1, :3], k[1, 3:3 + T]]).repeat_interleave(2, dim=1)
    vals = torch.cat([v[1, :3], v[1, 3:3 + T]]).repeat_interleave(2, dim=1)
    att = torch.einsum("thd,shd->hts", q[s:e], keys) / 8.0
    mask = torch.cat([torch.ones(T, 3, dtype=torch.bool), tb.dense_mask[s:e, :T]], 1)
    att = att.masked_fill(~mask, float("-inf")).softmax(-1)
    manual = torch.einsum("hts,shd->thd", att, vals)
    assert (manual - ref[s:e]).abs().max().item() <= 1e-5


def test_backend_selection():
    cpu = torch.device("cpu")
    assert "triton" in available_backends(cpu)  # interpreter mode is on
    assert select_backend(cpu, "auto") == "torch"  # the interpreter is never auto-selected
    assert select_backend(cpu, "torch") == "torch"
    with pytest.raises(ValueError, match="allowed values: auto, torch, triton, flashinfer"):
        select_backend(cpu, "cuda-graph")
    with pytest.raises(ValueError, match="not available"):
        select_backend(cpu, "flashinfer")
    q = torch.randn(1, 3, 64)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        tree_attention(q, torch.randn(1, 16, 2, 64), torch.randn(1, 16, 2, 64),
                       torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32),
                       torch.tensor([0, 1], dtype=torch.int32), torch.ones(1, 1, dtype=torch.int32))


# --------------------------------------------------------------------- flashinfer
def expected_masks(P, tb):
    """What query row i of request b may see: the whole prefix, then its tree
    ancestors and itself -> list of [T_b, P_b + T_b] bool."""
    cu = tb.cu_tree.tolist()
    out = []
    for b, p in enumerate(P.tolist()):
        s, e = cu[b], cu[b + 1]
        m = torch.ones(e - s, p + e - s, dtype=torch.bool)
        m[:, p:] = tb.dense_mask[s:e, :e - s]
        out.append(m)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_flashinfer_plan_inputs_layout(name):
    """Page metadata, the flattened custom mask and its bit-packed form as
    FlashInfer documents and reads them."""
    seed, _, (q, k, v, table, P, tb) = build_case(name)
    ps = k.shape[1]
    inp = flashinfer_plan_inputs(table, P, tb.cu_tree, tb.bits, ps)
    masks = expected_masks(P, tb)
    T = tb.tree_sizes
    kv = P + T
    msg = f"case {name!r} (seed {seed})"
    assert torch.equal(inp["qo_indptr"], tb.cu_tree), msg
    ind, pin, last = inp["paged_kv_indices"], inp["paged_kv_indptr"], inp["paged_kv_last_page_len"]
    assert all(x.dtype == torch.int32 for x in (ind, pin, last, inp["mask_indptr"])), msg
    assert pin[0] == 0 and ind.numel() == pin[-1], msg
    for b in range(len(P)):
        n = int(pin[b + 1] - pin[b])
        assert n == -(-int(kv[b]) // ps), msg
        assert torch.equal(ind[pin[b]:pin[b + 1]], table[b, :n]), msg
        assert 1 <= last[b] <= ps, msg
    # FlashInfer derives each request's KV length, hence the mask segment
    # offsets, from the paged metadata (_compute_page_mask_indptr)
    kv_fi = (pin[1:] - pin[:-1] - 1) * ps + last
    assert torch.equal(kv_fi, kv.to(torch.int32)), msg
    seg = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(T.long() * kv_fi, 0)])
    assert torch.equal(inp["mask_indptr"].long(), seg), msg
    cm = inp["custom_mask"]
    assert cm.dtype == torch.bool and cm.numel() == int(seg[-1]), msg
    for b, m in enumerate(masks):
        assert torch.equal(cm[seg[b]:seg[b + 1]].view(m.shape), m), f"{msg}: request {b}"
    # packed as segment_packbits(bitorder="little") does, each segment to whole
    # bytes; the kernel reads bit (i * kv_len + j) % 8 of byte (i * kv_len + j) // 8
    flat = cm.numpy()
    packed = [np.packbits(flat[seg[b]:seg[b + 1]], bitorder="little") for b in range(len(P))]
    byte_off = np.concatenate([[0], np.cumsum([len(x) for x in packed])])
    assert (np.diff(byte_off) == (np.diff(seg.numpy()) + 7) // 8).all(), msg
    buf = np.concatenate(packed)
    for b, m in enumerate(masks):
        i, j = np.meshgrid(np.arange(m.shape[0]), np.arange(m.shape[1]), indexing="ij")
        off = i * m.shape[1] + j
        read = (buf[byte_off[b] + off // 8] >> (off % 8)) & 1
        assert (read.astype(bool) == m.numpy()).all(), f"{msg}: packed request {b}"


class FakeFlashInferWrapper:
    """CPU stand-in for ``flashinfer.BatchPrefillWithPagedKVCacheWrapper``:
    counts ``plan``/``run`` calls and computes what FlashInfer documents for
    the planned inputs (request b: pages ``indices[indptr[b]:indptr[b+1]]``,
    ``kv_len = (pages - 1) * page_size + last_page_len[b]``, mask segment
    ``[qo_len, kv_len]`` flattened row-major, segments back to back)."""

    instances: list = []

    def __init__(self, float_workspace_buffer, kv_layout="NHD"):
        assert kv_layout == "NHD"
        self.plans = self.runs = 0
        FakeFlashInferWrapper.instances.append(self)

    def plan(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len,
             num_qo_heads, num_kv_heads, head_dim_qk, page_size, *, custom_mask=None,
             causal=False, sm_scale=None, q_data_type=None, kv_data_type=None):
        assert custom_mask is not None and custom_mask.dtype == torch.bool and not causal
        self.plans += 1
        self.p = dict(qo=qo_indptr.tolist(), kv=paged_kv_indptr.tolist(),
                      idx=paged_kv_indices.long(), last=paged_kv_last_page_len.tolist(),
                      hq=num_qo_heads, hkv=num_kv_heads, ps=page_size, mask=custom_mask,
                      scale=sm_scale, dtype=q_data_type)

    def run(self, q, paged_kv_cache):
        p = self.p
        assert self.plans and q.dtype == p["dtype"] and q.shape[1] == p["hq"]
        self.runs += 1
        k_cache, v_cache = paged_kv_cache
        g = p["hq"] // p["hkv"]
        out = torch.empty_like(q)
        off = 0
        for b in range(len(p["qo"]) - 1):
            s, e = p["qo"][b], p["qo"][b + 1]
            pages = p["idx"][p["kv"][b]:p["kv"][b + 1]]
            n = (len(pages) - 1) * p["ps"] + p["last"][b]
            kk = k_cache[pages].flatten(0, 1)[:n].repeat_interleave(g, 1)
            vv = v_cache[pages].flatten(0, 1)[:n].repeat_interleave(g, 1)
            m = p["mask"][off:off + (e - s) * n].view(e - s, n)
            off += (e - s) * n
            o = torch.nn.functional.scaled_dot_product_attention(
                q[s:e].transpose(0, 1), kk.transpose(0, 1), vv.transpose(0, 1), attn_mask=m,
                scale=p["scale"])
            out[s:e] = o.transpose(0, 1)
        assert off == p["mask"].numel()
        return out


@pytest.fixture
def fake_flashinfer(monkeypatch):
    """``flashinfer`` importable and 'available' on CPU, with the fake wrapper."""
    mod = types.ModuleType("flashinfer")
    mod.BatchPrefillWithPagedKVCacheWrapper = FakeFlashInferWrapper
    monkeypatch.setitem(sys.modules, "flashinfer", mod)
    monkeypatch.setattr(ta, "_flashinfer_available", lambda device: True)
    monkeypatch.setattr(ta, "_flashinfer_workspace", lambda device: torch.empty(0))
    FakeFlashInferWrapper.instances = []
    return FakeFlashInferWrapper


@pytest.mark.parametrize("name", list(CASES))
def test_flashinfer_path_matches_reference(name, fake_flashinfer):
    seed, _, (q, k, v, table, P, tb) = build_case(name)
    ref = reference_tree_attention(q, k, v, table, P, tb.cu_tree, tb.bits)
    out = tree_attention(q, k, v, table, P, tb.cu_tree, tb.bits, backend="flashinfer")
    err = (out - ref).abs().max().item()
    assert err <= ATOL, f"case {name!r} (seed {seed}): max abs error {err:.2e}"
    (w,) = fake_flashinfer.instances
    assert (w.plans, w.runs) == (1, 1)


def test_hf_forward_plans_once_per_step(fake_flashinfer):
    """A 2-layer transformers model through the tree-attention hook: one
    FlashInfer plan per forward, one run per layer, logits equal to the
    dense-mask SDPA forward."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from specpack.hf.kv_cache import CachedLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, max_position_embeddings=128)
    model = LlamaForCausalLM(cfg)
    tree_lm = CachedLM(model, tree_attention="flashinfer")
    dense_lm = CachedLM(model, tree_attention=None)
    rng = np.random.default_rng(seed_of("hf-forward"))
    keys = ["a", "b", "c"]
    prompts = [rng.integers(0, 64, n).tolist() for n in (5, 12, 1)]
    for lm in (tree_lm, dense_lm):
        lm.extend(keys, prompts)
    assert fake_flashinfer.instances == []           # prefill: dense path, no plan
    for step in range(2):
        drafts = [random_draft(rng, 6), random_draft(rng, 3, "chain"), Draft.empty()]
        tb = build_tree_batch(drafts)
        cu = tb.cu_tree.tolist()
        toks = [[int(rng.integers(64))] + d.tokens.tolist() for d in drafts]
        pos = [(tb.depths[cu[b]:cu[b + 1]] + tree_lm.length(k)).tolist()
               for b, k in enumerate(keys)]
        masks = [tb.dense_mask[cu[b]:cu[b + 1], :len(d) + 1].numpy()
                 for b, d in enumerate(drafts)]
        got = tree_lm.forward(keys, toks, pos, masks, tree_bits=tb.bits)
        want = dense_lm.forward(keys, toks, pos, masks)
        for b in range(len(keys)):
            assert (got[b] - want[b]).abs().max().item() <= 1e-4, f"step {step}, request {b}"
        assert len(fake_flashinfer.instances) == step + 1
        w = fake_flashinfer.instances[-1]
        assert (w.plans, w.runs) == (1, cfg.num_hidden_layers)


@pytest.mark.parametrize("backend", ["torch", "triton", "flashinfer"])
def test_incremental_block_queries_equal_full_block_rows(backend, request):
    """``block_lens``: a block already in the cache whose last ``T_b`` tokens
    are the queries (a tree drafted level by level) gives exactly the rows the
    whole-block call gives for those tokens; requests with 0..all rows queried."""
    if backend == "flashinfer":
        request.getfixturevalue("fake_flashinfer")
    rng = np.random.default_rng(seed_of("incremental"))
    drafts = [random_draft(rng, 9), random_draft(rng, 5, "chain"), random_draft(rng, 12, "wide"),
              random_draft(rng, 3)]
    q, k, v, table, P, tb = make_case(rng, drafts, [40, 0, 17, 70], 4, 2, 64, 16)
    full = reference_tree_attention(q, k, v, table, P, tb.cu_tree, tb.bits)
    sizes = tb.tree_sizes.tolist()
    n_query = [3, sizes[1], 1, 0]                 # last rows queried per request
    cu = tb.cu_tree.tolist()
    rows = torch.cat([torch.arange(cu[b + 1] - n, cu[b + 1]) for b, n in enumerate(n_query)])
    cu_q = torch.tensor(np.concatenate([[0], np.cumsum(n_query)]), dtype=torch.int32)
    out = tree_attention(q[rows], k, v, table, P, cu_q, tb.bits[rows], backend=backend,
                         block_lens=tb.tree_sizes)
    err = (out - full[rows]).abs().max().item()
    assert err <= ATOL, f"{backend}: max abs error {err:.2e}"
    with pytest.raises(ValueError, match="block_lens"):
        tree_attention(q[rows], k, v, table, P, cu_q, tb.bits[rows], backend="torch",
                       block_lens=torch.ones(4, dtype=torch.int32))
