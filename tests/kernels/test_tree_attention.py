"""Triton tree attention (interpreter mode on CPU) against the torch SDPA
reference, and the vectorised mask builder against Draft.ancestor_mask.

Tolerance: max abs error <= 2e-5 in float32 (inputs ~N(0, 1))."""

import os

# Triton reads this when it is imported (here, at collection). tests/conftest.py
# removes it again for every test outside tests/kernels, so vLLM subprocesses
# and the rest of the suite never see it.
os.environ["TRITON_INTERPRET"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from specpack.draft import Draft  # noqa: E402
from specpack.kernels.tree_attention import (available_backends, contiguous_as_paged,  # noqa: E402
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


@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_reference(name):
    rng = np.random.default_rng(abs(hash(name)) % 1000)
    trees, prefixes, Hq, Hkv, D, ps = CASES[name]
    drafts = [random_draft(rng, n, k) for n, k in trees]
    q, k, v, table, P, tb = make_case(rng, drafts, prefixes, Hq, Hkv, D, ps)
    ref = reference_tree_attention(q, k, v, table, P, tb.cu_tree, tb.bits)
    out = tree_attention(q, k, v, table, P, tb.cu_tree, tb.bits, backend="triton")
    assert (out - ref).abs().max().item() <= ATOL


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
