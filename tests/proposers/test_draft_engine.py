"""The drafting engine against plain full-sequence forwards of the same model.

Differential: every logit row the engine returns (prefill in pieces, tree
blocks drafted level by level, commits of a path, rollbacks, evictions)
equals the logits of one ordinary causal forward of ``transformers`` over
the committed tokens + the token's ancestor path. Edge cases: page
boundaries (page size 4), a block spanning pages, commit of a non-prefix
path (compaction), LRU eviction and re-prefill, a batch larger than the pool.
"""

import numpy as np
import pytest
import torch

from specpack.proposers.model.engine import DraftEngine, PoolExhausted
from specpack.testing.tiny_models import tiny_vocab_llama

ATOL = 2e-4


@pytest.fixture(scope="module")
def lm():
    m = tiny_vocab_llama(vocab_size=50, seed=3, hidden_size=64)
    m.config.max_position_embeddings = 512
    return m


def full_logits(lm, tokens):
    """Last-position float32 logits of one causal forward over ``tokens``."""
    with torch.no_grad():
        return lm(input_ids=torch.tensor([tokens])).logits[0, -1].float()


def path(parents, tokens, i):
    out = []
    while i >= 0:
        out.append(tokens[i])
        i = parents[i]
    return out[::-1]


def test_prefill_in_pieces_and_batched_tree_levels(lm):
    eng = DraftEngine(lm, max_tokens=512, page_size=4, chunk_tokens=5, max_batch_tokens=9)
    rng = np.random.default_rng(0)
    ctx = {"a": rng.integers(0, 50, 13).tolist(), "b": rng.integers(0, 50, 3).tolist(),
           "c": rng.integers(0, 50, 8).tolist()}
    keys = list(ctx)
    last = eng.extend(keys, [ctx[k] for k in keys])
    for k, lg in zip(keys, last):
        assert eng.committed(k) == ctx[k]
        assert (lg - full_logits(lm, ctx[k])).abs().max() <= ATOL
    # a tree drafted in two levels: level 1 = 2 children of the root, level 2 =
    # children of both, then a third level under node 3 only, for a and c
    blocks = {k: ([], []) for k in keys}
    levels = [
        {k: ([7, 9], [-1, -1]) for k in keys},
        {k: ([4, 5, 6], [0, 0, 1]) for k in keys},
        {"a": ([11], [3]), "c": ([12, 13], [4, 4])},
    ]
    for level in levels:
        lk = list(level)
        toks = [level[k][0] for k in lk]
        pars = [level[k][1] for k in lk]
        pos = []
        for k, ps in zip(lk, pars):
            t, p = blocks[k]
            depth = [len(path(p + list(ps), t + list(level[k][0]), len(t) + i))
                     for i in range(len(ps))]
            pos.append([len(ctx[k]) - 1 + d for d in depth])
        out = eng.append(lk, toks, pos, pars)
        for k, lg in zip(lk, out):
            t, p = blocks[k]
            t.extend(level[k][0])
            p.extend(level[k][1])
            for r in range(lg.shape[0]):
                i = len(t) - lg.shape[0] + r
                want = full_logits(lm, ctx[k] + path(p, t, i))
                assert (lg[r] - want).abs().max() <= ATOL, (k, i)
    # commit a non-prefix path for a (slots 1 -> 4: tokens 9, 6), roll back b,
    # keep c's first node; then continue decoding from the new ends
    eng.commit(["a", "b", "c"], [[1, 4], [], [0]])
    assert eng.committed("a") == ctx["a"] + [9, 6]
    assert eng.committed("b") == ctx["b"]
    assert eng.committed("c") == ctx["c"] + [7]
    nxt = eng.extend(keys, [[3], [8, 2], [1]])
    for k, lg in zip(keys, nxt):
        assert (lg - full_logits(lm, eng.committed(k))).abs().max() <= ATOL, k


def test_pool_is_bounded_and_evicts_least_recently_used(lm):
    eng = DraftEngine(lm, max_tokens=32, page_size=4)
    assert eng.pool.num_pages == 8
    eng.extend(["old"], [[1] * 10])           # 3 pages
    eng.extend(["mid"], [[2] * 10])           # 3 pages
    eng.extend(["new"], [[3] * 10])           # needs 3, 2 free: evicts "old"
    assert "old" not in eng.seqs and eng.evictions == 1
    assert eng.pages_in_use() == 6
    # the evicted request comes back: re-prefilled, correct
    (lg,) = eng.extend(["old"], [[1] * 10])
    assert (lg - full_logits(lm, [1] * 10)).abs().max() <= ATOL
    assert eng.pages_in_use() <= eng.pool.num_pages
    # a single forward that cannot fit even after evicting everyone else
    with pytest.raises(PoolExhausted, match="max_tokens"):
        eng.extend(["x", "y", "z"], [[1] * 12, [2] * 12, [3] * 12])


def test_rollback_frees_block_pages_and_release_frees_all(lm):
    eng = DraftEngine(lm, max_tokens=64, page_size=4)
    eng.extend(["r"], [[1, 2, 3, 4]])
    before = eng.pages_in_use()
    eng.append(["r"], [[5] * 9], [list(range(4, 13))], [list(range(-1, 8))])
    assert eng.pages_in_use() == before + 3
    eng.rollback(["r"])
    assert eng.pages_in_use() == before and eng.block_size("r") == 0
    eng.release("r")
    assert eng.pages_in_use() == 0


def test_bad_calls_name_the_problem(lm):
    eng = DraftEngine(lm, max_tokens=64, page_size=4)
    eng.extend(["r"], [[1, 2]])
    eng.append(["r"], [[3]], [[2]], [[-1]])
    with pytest.raises(ValueError, match="outside a block of 1"):
        eng.commit(["r"], [[1]])
    with pytest.raises(ValueError, match="twice"):
        eng.append(["r", "r"], [[1], [2]], [[3], [3]], [[-1], [-1]])
    with pytest.raises(ValueError, match="page_size"):
        DraftEngine(lm, max_tokens=2, page_size=4)


def test_drafter_pool_stays_under_budget_with_64_concurrent_requests(lm):
    """64 live requests whose KV does not fit the pool at once: the drafter
    drafts them in pieces that fit, pages never exceed the budget, and every
    draft equals the draft of a drafter with room for all (greedy)."""
    from specpack.config import DraftModelConfig
    from specpack.protocols import Budget, RequestView
    from specpack.proposers.model.draft_model import DraftModelProposer

    small = DraftModelProposer(lm, DraftModelConfig(draft_model="m", kv_budget_tokens=640,
                                                    page_size=8), max_nodes=4)
    roomy = DraftModelProposer(lm, DraftModelConfig(draft_model="m"), max_nodes=4)
    rng = np.random.default_rng(1)
    ctxs = {f"r{i}": rng.integers(0, 50, int(rng.integers(20, 60))).tolist() for i in range(64)}
    ctxs["huge"] = rng.integers(0, 50, 700).tolist()       # alone larger than the pool
    peak = 0
    for step in range(3):
        views = [RequestView(k, np.asarray(c, np.int32), Budget(4, 4)) for k, c in ctxs.items()]
        a, b = small.propose(views), roomy.propose(views)
        peak = max(peak, small.engine.pages_in_use())
        assert small.engine.pages_in_use() <= small.engine.pool.num_pages == 80
        for k, da, db in zip(ctxs, a, b):
            if k == "huge":
                assert len(da) == 0
                continue
            assert da.tokens.tolist() == db.tokens.tolist(), (step, k)
            ctxs[k] = ctxs[k] + da.tokens[:2].tolist() + [int(rng.integers(0, 50))]
    assert small.engine.evictions > 0 and peak > 40
