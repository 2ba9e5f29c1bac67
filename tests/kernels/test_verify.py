import numpy as np
import pytest
import torch

from specpack.draft import Draft
from specpack.kernels.sampling import process_logits
from specpack.kernels.verify import children_lists, greedy_verify, sample_verify


def tree():
    # root -> 0(a=10) -> 2(12) ; root -> 1(b=11) -> 3(13), 4(14)
    return Draft([10, 11, 12, 13, 14], [-1, -1, 0, 1, 1])


def test_children_lists():
    assert children_lists(tree()) == [[0, 1], [2], [3, 4], [], [], []]


def test_greedy_follows_argmax_path_and_appends_bonus():
    d = tree()
    # rows: root, n0, n1, n2, n3, n4
    r = greedy_verify(d, [11, 0, 14, 0, 0, 7])
    assert r.accepted_nodes == [1, 4] and r.tokens == [11, 14, 7]
    r = greedy_verify(d, [99, 0, 0, 0, 0, 0])  # fully rejected: just the target token
    assert r.accepted_nodes == [] and r.tokens == [99]
    r = greedy_verify(Draft.empty(), [5])
    assert r.tokens == [5]
    c = Draft.chain([1, 2, 3])
    r = greedy_verify(c, [1, 2, 3, 4])  # fully accepted chain + bonus
    assert r.accepted_nodes == [0, 1, 2] and r.tokens == [1, 2, 3, 4]


def test_sample_verify_one_hot_target_is_deterministic():
    d = tree()
    p = torch.zeros(6, 20)
    for row, tok in enumerate([11, 0, 13, 0, 0, 0]):
        p[row, tok] = 1.0
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        r = sample_verify(d, p, g)
        assert r.tokens == [11, 13, 0] and r.accepted_nodes == [1, 3]


def test_sample_verify_with_dists_equal_target_accepts_everything():
    V = 8
    q = torch.softmax(torch.randn(4, V, generator=torch.Generator().manual_seed(1)), -1)
    g = torch.Generator().manual_seed(2)
    toks = [int(torch.multinomial(q[0], 1, generator=g))]
    toks.append(int(torch.multinomial(q[1], 1, generator=g)))
    toks.append(int(torch.multinomial(q[2], 1, generator=g)))
    d = Draft.chain(toks, dists=q.numpy())
    for _ in range(10):
        r = sample_verify(d, q, g)  # p == q: min(1, p/q) = 1
        assert r.accepted_nodes == [0, 1, 2]


def test_process_logits_top_p_and_temperature():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = process_logits(logits, 1.0, 0.8)
    assert torch.allclose(p, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    p = process_logits(logits, 1.0, 0.4)
    assert torch.allclose(p, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    hot = process_logits(logits, 0.5, 1.0)
    assert hot[0, 0] > 0.5
    with pytest.raises(ValueError, match="temperature"):
        process_logits(logits, 0.0)
    with pytest.raises(ValueError, match="top_p"):
        process_logits(logits, 1.0, 0.0)


def test_single_step_marginal_matches_target_for_all_schemes():
    """One position, many draws: the emitted first token has distribution p."""
    V = 5
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    q = torch.tensor([0.1, 0.1, 0.2, 0.3, 0.3])
    counts = {"dists": np.zeros(V), "one-hot": np.zeros(V)}
    n = 20000
    for _ in range(n):
        kids = torch.multinomial(q, 2, replacement=True, generator=gen).tolist()
        d = Draft(kids, [-1, -1], dists=np.stack([q.numpy()] * 3))
        counts["dists"][sample_verify(d, p[None].expand(3, V), gen).tokens[0]] += 1
        d = Draft([3, 4], [-1, -1])
        counts["one-hot"][sample_verify(d, p[None].expand(3, V), gen).tokens[0]] += 1
    for name, c in counts.items():
        assert np.abs(c / n - p.numpy()).max() < 0.015, name
