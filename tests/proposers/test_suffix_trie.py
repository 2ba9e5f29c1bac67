from collections import Counter

import numpy as np
import pytest

from specpack.proposers.retrieval.suffix_trie import SuffixTrie


def brute_counts(seqs, D):
    c = Counter()
    for s in seqs:
        s = list(s)
        for i in range(len(s)):
            for d in range(1, D + 1):
                if i + d <= len(s):
                    c[tuple(s[i:i + d])] += 1
    return c


def assert_counts(trie, seqs, D):
    expect = brute_counts(seqs, D)
    for pat, n in expect.items():
        assert trie.count(pat) == n, pat
    # and nothing else is alive: live nodes == distinct substrings (+ root)
    assert trie.num_nodes - trie.num_dead - 1 == len(expect)


@pytest.mark.parametrize("D", [1, 2, 5])
def test_counts_match_brute_force(D):
    rng = np.random.default_rng(D)
    seq = rng.integers(0, 4, size=200)
    t = SuffixTrie(D)
    t.add_sequence(seq)
    assert_counts(t, [seq], D)


def test_incremental_equals_bulk_and_grows():
    rng = np.random.default_rng(1)
    seq = rng.integers(0, 50, size=3000).astype(np.int32)
    a, b = SuffixTrie(6, capacity=16), SuffixTrie(6, capacity=16)
    a.add_sequence(seq)
    b.start_sequence()
    i = 0
    while i < seq.size:
        step = int(rng.integers(1, 9))
        b.extend(seq[i:i + step])
        i += step
    for pat in [seq[10:13], seq[100:106], seq[-6:], seq[-1:]]:
        assert a.count(pat) == b.count(pat) > 0
    assert a.num_nodes == b.num_nodes
    assert b.tok.size >= b.num_nodes  # grew past the initial 16


def test_active_nodes_are_current_suffixes():
    t = SuffixTrie(4)
    t.add_sequence(np.array([1, 2, 3, 1, 2]))
    assert t.active_node(0) == 0
    for length, pat in [(1, [2]), (2, [1, 2]), (3, [3, 1, 2]), (4, [2, 3, 1, 2])]:
        node = t.active_node(length)
        assert node > 0 and t.count(pat) == t.cnt[node]
    assert t.active_node(5) == -1


def test_empty_and_single_token():
    t = SuffixTrie(3)
    t.add_sequence(np.array([], np.int32))
    assert t.num_nodes == 1 and t.count([1]) == 0
    t.add_sequence(np.array([9]))
    assert t.count([9]) == 1 and t.count([9, 9]) == 0


def test_remove_restores_counts_and_reuses_nodes():
    rng = np.random.default_rng(2)
    seqs = [rng.integers(0, 5, size=int(rng.integers(1, 40))) for _ in range(6)]
    t = SuffixTrie(4)
    for s in seqs:
        t.add_sequence(s)
    assert_counts(t, seqs, 4)
    t.remove_sequence(seqs[0])
    t.remove_sequence(seqs[3])
    assert_counts(t, [seqs[i] for i in (1, 2, 4, 5)], 4)
    n = t.num_nodes
    t.add_sequence(seqs[0])  # revives dead nodes instead of allocating
    assert t.num_nodes == n
    assert_counts(t, [seqs[i] for i in (0, 1, 2, 4, 5)], 4)


def test_long_repeat_counts():
    t = SuffixTrie(8)
    t.add_sequence(np.zeros(1000, np.int32))
    assert t.count([0] * 8) == 993
    assert t.num_nodes == 9  # one node per depth


def test_negative_token_ids_do_not_collide():
    t = SuffixTrie(3)
    t.add_sequence(np.array([5, -1, 5, -2, 7], np.int32))
    assert t.count([5, -1]) == 1 and t.count([5, -2]) == 1 and t.count([-1]) == 1
    assert t.count([5, -3]) == 0 and t.count([-1, 7]) == 0


def test_large_token_ids():
    t = SuffixTrie(3)
    big = np.array([2**31 - 1, 0, 2**31 - 1, 0], np.int32)
    t.add_sequence(big)
    assert t.count([2**31 - 1, 0]) == 2
