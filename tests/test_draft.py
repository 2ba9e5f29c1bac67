import numpy as np
import pytest

from specpack.draft import Draft


def test_empty_draft():
    d = Draft.empty()
    assert len(d) == 0 and d.max_depth == 0
    assert d.best_path().size == 0
    assert d.ancestor_mask().shape == (0, 0)
    assert d.is_chain


def test_single_node():
    d = Draft([7], [-1])
    assert d.depths.tolist() == [1]
    assert d.positions(10).tolist() == [11]
    assert d.ancestor_mask().tolist() == [[True]]
    assert d.best_path_tokens().tolist() == [7]


def test_chain_helpers():
    d = Draft.chain([5, 6, 7, 8])
    assert d.is_chain
    assert d.parents.tolist() == [-1, 0, 1, 2]
    assert d.depths.tolist() == [1, 2, 3, 4]
    assert d.positions(100).tolist() == [101, 102, 103, 104]
    assert np.array_equal(d.ancestor_mask(), np.tril(np.ones((4, 4), bool)))
    assert d.best_path_tokens().tolist() == [5, 6, 7, 8]


def tree():
    #      root
    #     /    \
    #    0(a)   1(b)
    #   / \       \
    #  2   3       4
    #  |
    #  5
    return Draft([10, 11, 12, 13, 14, 15], [-1, -1, 0, 0, 1, 2],
                 probs=[0.6, 0.4, 0.3, 0.25, 0.39, 0.2])


def test_tree_depths_mask_positions():
    d = tree()
    assert not d.is_chain
    assert d.depths.tolist() == [1, 1, 2, 2, 2, 3]
    m = d.ancestor_mask()
    assert m[5].tolist() == [True, False, True, False, False, True]
    assert m[4].tolist() == [False, True, False, False, True, False]
    assert m.sum() == 6 + 5  # self + ancestors
    assert d.positions(0).tolist() == [1, 1, 2, 2, 2, 3]
    assert sorted(d.leaves().tolist()) == [3, 4, 5]


def test_best_path_uses_probability_sum():
    d = tree()
    # paths: [0,2,5]=1.1, [0,3]=0.85, [1,4]=0.79
    assert d.best_path().tolist() == [0, 2, 5]
    no_probs = Draft(d.tokens, d.parents)
    assert no_probs.best_path().tolist() == [0, 2, 5]  # longest
    p = Draft(d.tokens, d.parents, probs=[0.1, 0.9, 0.1, 0.1, 0.9, 0.1])
    assert p.best_path_tokens().tolist() == [11, 14]


def test_truncated_drops_subtrees():
    d = tree()
    t = d.truncated(max_nodes=6, max_depth=2)
    assert t.tokens.tolist() == [10, 11, 12, 13, 14]
    t = d.truncated(max_nodes=2)
    assert t.parents.tolist() == [-1, -1]
    t = Draft([1, 2, 3], [-1, 0, -1]).truncated(max_nodes=3, max_depth=1)
    assert t.tokens.tolist() == [1, 3] and t.parents.tolist() == [-1, -1]


@pytest.mark.parametrize("parents", [[0], [-1, 1], [-1, -2], [-1, 0, 3]])
def test_invalid_parents_rejected(parents):
    with pytest.raises(ValueError, match="parents"):
        Draft(np.arange(len(parents)), parents)


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="probs"):
        Draft([1, 2], [-1, 0], probs=[0.5])
    with pytest.raises(ValueError, match="tokens"):
        Draft([1, 2], [-1])


def test_random_tree_mask_matches_paths():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        parents = [-1] + [int(rng.integers(-1, i)) for i in range(1, n)]
        d = Draft(rng.integers(0, 100, n), parents)
        m = d.ancestor_mask()
        for i in range(n):
            assert set(np.flatnonzero(m[i])) == set(d.path_to(i).tolist())
            assert d.depths[i] == len(d.path_to(i))
