import numpy as np
import pytest

from specpack.config import SuffixConfig
from specpack.draft import Draft
from specpack.protocols import Budget, Proposer, RequestView
from specpack.proposers.retrieval.suffix import SuffixProposer


def view(key, ctx, budget=16, depth=None, prompt=-1):
    return RequestView(key, np.asarray(ctx, np.int32), Budget(budget, depth or budget),
                       num_prompt_tokens=prompt)


def cfg(**kw):
    return SuffixConfig(**kw)


def test_implements_protocol():
    assert isinstance(SuffixProposer(), Proposer)


def test_empty_and_one_token_context():
    p = SuffixProposer()
    assert len(p.propose([view("a", [])])[0]) == 0
    assert len(p.propose([view("b", [5])])[0]) == 0


def test_repeat_is_drafted_with_full_confidence():
    p = SuffixProposer(cfg(suffix_decoding_max_spec_factor=4.0), max_nodes=16)
    cycle = [3, 1, 4, 1, 5, 9, 2, 6]
    d = p.propose([view("a", cycle * 3 + cycle[:2])])[0]
    path = d.best_path_tokens().tolist()
    expected = (cycle * 4)[2:2 + len(path)]
    assert len(path) >= 8 and path == expected
    assert np.allclose(d.probs[d.best_path()], 1.0)


def test_length_capped_by_spec_factor_and_budget():
    ctx = list(range(20)) + list(range(5))  # match length 5 at most
    p = SuffixProposer(cfg(suffix_decoding_max_spec_factor=1.0), max_nodes=16)
    d = p.propose([view("a", ctx)])[0]
    assert len(d) <= 5 and d.best_path_tokens().tolist() == [5, 6, 7, 8, 9][:len(d)]
    p = SuffixProposer(cfg(suffix_decoding_max_spec_factor=10.0), max_nodes=16)
    assert len(p.propose([view("a", ctx, budget=3)])[0]) == 3
    assert p.propose([view("b", ctx, budget=16, depth=2)])[0].max_depth == 2
    assert len(p.propose([view("c", ctx, budget=0)])[0]) == 0


def test_probabilities_are_count_ratios_and_pruned():
    # after "7 8": continuation 1 seen 3 times, 2 once -> 0.75 / 0.25
    ctx = [7, 8, 1, 0, 7, 8, 1, 0, 7, 8, 2, 0, 7, 8, 1, 0, 7, 8]
    # depth 3: patterns of <= 2 tokens, so only "7 8" / "8" can match
    p = SuffixProposer(cfg(suffix_decoding_min_token_prob=0.2, suffix_decoding_max_tree_depth=3,
                           suffix_decoding_max_spec_factor=1.0), max_nodes=4)
    d = p.propose([view("a", ctx)])[0]
    first = {int(t): float(pr) for t, pr, par in zip(d.tokens, d.probs, d.parents) if par == -1}
    assert first == pytest.approx({1: 0.75, 2: 0.25})
    p = SuffixProposer(cfg(suffix_decoding_min_token_prob=0.3,
                           suffix_decoding_max_tree_depth=3), max_nodes=4)
    d = p.propose([view("a", ctx)])[0]
    assert 2 not in d.tokens[d.parents == -1].tolist()
    assert np.all(d.probs >= 0.3)


def test_min_prob_zero_keeps_best_candidates_when_pool_overflows():
    # after token 9: 1199 distinct rare continuations, then one frequent one (5)
    ctx = []
    for t in range(1000, 2199):
        ctx += [9, t]
    ctx += [9, 5] * 300 + [9]
    p = SuffixProposer(cfg(suffix_decoding_min_token_prob=0.0,
                           suffix_decoding_max_tree_depth=2), max_nodes=1)
    d = p.propose([view("a", ctx, budget=1)])[0]
    assert d.tokens.tolist() == [5]


def test_huge_spec_factor_keeps_drafting():
    p = SuffixProposer(cfg(suffix_decoding_max_spec_factor=1000.0), max_nodes=8)
    cycle = [3, 1, 4, 1, 5, 9, 2, 6]
    assert len(p.propose([view("a", cycle * 3)])[0]) == 8


def test_tree_is_valid_and_best_first():
    rng = np.random.default_rng(0)
    ctx = rng.integers(0, 6, size=400)
    p = SuffixProposer(cfg(suffix_decoding_max_spec_factor=8.0,
                           suffix_decoding_min_token_prob=0.0), max_nodes=32)
    d = p.propose([view("a", ctx, budget=32)])[0]
    assert 1 < len(d) <= 32
    Draft(d.tokens, d.parents, d.probs)  # valid parent order
    # a child's probability never exceeds its parent's
    par = d.parents
    assert np.all(d.probs[par >= 0] <= d.probs[par[par >= 0]] + 1e-6)


def test_incremental_update_matches_fresh_state():
    rng = np.random.default_rng(3)
    seq = rng.integers(0, 8, size=600).astype(np.int32)
    inc = SuffixProposer(max_nodes=8)
    for n in range(50, 600, 7):
        d_inc = inc.propose([view("r", seq[:n])])[0]
        fresh = SuffixProposer(max_nodes=8).propose([view("r", seq[:n])])[0]
        assert d_inc.tokens.tolist() == fresh.tokens.tolist()
        assert d_inc.parents.tolist() == fresh.parents.tolist()


def test_state_rebuilt_when_context_changes_under_same_key():
    p = SuffixProposer(max_nodes=8)
    a = [1, 2, 3, 1, 2, 3, 1, 2]
    p.propose([view("k", a)])
    b = [9, 8, 7, 9, 8, 7, 9, 8]  # same key, different request content
    d = p.propose([view("k", b)])[0]
    assert d.best_path_tokens().tolist()[:1] == [7]
    assert p.states["k"].trie.count([1, 2]) == 0


def test_identical_prompts_keep_separate_states():
    p = SuffixProposer(max_nodes=8)
    prompt = [4, 5, 6, 4, 5]
    d1, d2 = p.propose([view("x", prompt), view("y", prompt)])
    assert d1.tokens.tolist() == d2.tokens.tolist() == [6, 4, 5][:len(d1)]
    # diverge: each key sees its own continuation
    d1, d2 = p.propose([view("x", prompt + [6, 4, 5]), view("y", prompt + [0, 0, 0])])
    assert p.states["x"].trie.count([0, 0]) == 0
    assert p.states["y"].trie.count([0, 0]) == 2


def test_global_cache_shares_finished_outputs_and_evicts_oldest():
    p = SuffixProposer(cfg(suffix_decoding_max_cached_requests=2), max_nodes=8)
    outputs = {k: list(range(100 * k, 100 * k + 12)) for k in (1, 2, 3)}
    for k, out in outputs.items():
        prompt = [7, 7, 7]
        p.propose([view(k, prompt + out, prompt=3)])
        p.release(k)
    g = p.global_cache
    assert len(g) == 2
    assert g.trie.count(outputs[1][:3]) == 0  # oldest evicted
    assert g.trie.count(outputs[3][:3]) == 1
    assert g.trie.count([7, 7]) == 0  # prompts are not cached
    # a new request echoing request 3's output gets drafts from the global trie
    d = p.propose([view("new", [50, 51] + outputs[3][:4])])[0]
    assert d.best_path_tokens().tolist()[:4] == outputs[3][4:8]
    # preempted requests are not treated as finished outputs
    p.propose([view("pre", [1] + outputs[2], prompt=1)])
    p.release("pre", finished=False)
    assert g.trie.count(outputs[2][:3]) == 1


def test_global_cache_token_cap_and_disable():
    p = SuffixProposer(cfg(suffix_decoding_max_cached_tokens=20), max_nodes=8)
    for k in range(5):
        p.propose([view(k, [1] + list(range(k * 10, k * 10 + 10)), prompt=1)])
        p.release(k)
    assert p.global_cache.num_tokens <= 20 and len(p.global_cache) == 2
    p = SuffixProposer(cfg(suffix_decoding_max_cached_requests=0), max_nodes=8)
    p.propose([view(0, [1, 2, 3, 4], prompt=1)])
    p.release(0)
    assert len(p.global_cache) == 0


def test_global_trie_rebuild_bounds_dead_nodes():
    p = SuffixProposer(cfg(suffix_decoding_max_cached_requests=3,
                           suffix_decoding_max_tree_depth=8), max_nodes=4)
    rng = np.random.default_rng(0)
    for k in range(200):
        out = rng.integers(0, 1000, size=50).tolist()
        p.propose([view(k, [0] + out, prompt=1)])
        p.release(k)
    t = p.global_cache.trie
    assert t.num_dead <= max(4096, t.num_nodes // 2)
    assert t.num_nodes < 3 * 50 * 8 + 4096 + 1


def test_active_request_cap_evicts_lru():
    p = SuffixProposer(cfg(max_active_requests=3), max_nodes=4)
    for k in range(5):
        p.propose([view(k, [1, 2, 1, 2])])
    assert list(p.states) == [2, 3, 4]
    p.release(99)  # unknown key is fine
