"""Step-cost fit and the goodput-greedy draft lengths (auto-off)."""

import numpy as np
import pytest

from specpack.proposers.policy.cost_model import StepCostModel, choose_draft_lengths


def fitted(a, b, c, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    m = StepCostModel(forget=1.0)
    for _ in range(200):
        n, d = int(rng.integers(1, 300)), int(rng.integers(0, 9))
        m.observe(n, d, a + b * n + c * d + noise * rng.standard_normal())
    return m


def test_fit_recovers_coefficients():
    m = fitted(0.01, 0.0002, 0.001, noise=1e-5)
    assert m.coef == pytest.approx([0.01, 0.0002, 0.001], rel=0.05)
    assert m.predict(100, 4) == pytest.approx(0.01 + 0.02 + 0.004, rel=0.02)


def test_slopes_never_negative_and_bad_samples_ignored():
    m = StepCostModel()
    for n in range(1, 50):
        m.observe(n, 0, 0.01 - 1e-5 * n)    # faster with more tokens: nonsense
    assert (m.coef[1:] >= 0).all() and m.coef[0] > 0
    before = m.n
    m.observe(10, 1, float("nan"))
    m.observe(10, 1, -1.0)
    assert m.n == before


def test_no_model_means_full_caps():
    assert choose_draft_lengths([0.1, 0.9], [4, 8], None) == [4, 8]
    assert choose_draft_lengths([0.1, 0.9], [4, 8], StepCostModel()) == [4, 8]


def test_low_load_speculates_high_load_turns_off():
    # fixed cost dominates (small batch): drafting is cheap relative to a step
    m = fitted(0.02, 0.00005, 0.0)
    assert choose_draft_lengths([0.6], [8], m)[0] >= 4
    # verification cost dominates: 64 requests with a mediocre acceptance rate
    m = fitted(0.004, 0.001, 0.0)
    lens = choose_draft_lengths([0.5] * 64, [8] * 64, m)
    assert lens == [0] * 64
    # ... but near-certain requests still speculate
    lens = choose_draft_lengths([0.5] * 63 + [0.99], [8] * 64, m)
    assert lens[:63] == [0] * 63 and lens[63] > 0


def test_lengths_respect_caps_and_zero_alpha():
    m = fitted(0.05, 0.0, 0.0)      # free verification: everything up to the cap pays
    assert choose_draft_lengths([0.9, 0.0, 0.9], [3, 8, 0], m) == [3, 0, 0]


def test_depth_cost_is_shared_by_the_batch():
    """The drafter pass (c) is charged once per depth for the whole batch: a
    request for which it is too dear on its own drafts, at marginal cost b,
    once the batch pays for that depth.

    Equal acceptance rates cannot show this: depth 1 pays for n requests of
    rate alpha iff n alpha / (n b + c) > n / (a + n b), i.e.
    c < alpha a - (1 - alpha) n b, a bound that only falls as n grows (the
    intercept a is shared by the batch too). So the batch here is 15 strong
    requests and the weak one."""
    m = fitted(0.004, 0.0001, 0.003)
    a, b, c = m.coef
    weak, strong, n = 0.6, 0.95, 16
    # alone, depth 1 lowers goodput: weak (a + b) < b + c
    assert (1 + weak) / (a + 2 * b + c) < 1 / (a + b)
    assert choose_draft_lengths([weak], [4], m) == [0]
    # in the batch the strong requests pay c for depth 1 ...
    g0 = n / (a + n * b)
    g_strong = (n + (n - 1) * strong) / (a + n * b + c + (n - 1) * b)
    assert g_strong > g0
    # ... and the weak request's token, costing only b, raises goodput further
    assert weak / b > g_strong
    # (charged c per drafting request instead, depth 1 would not pay at all)
    assert (n + (n - 1) * strong + weak) / (a + 2 * n * b + n * c) < g0
    many = choose_draft_lengths([strong] * (n - 1) + [weak], [4] * n, m)
    assert min(many) >= 1


def test_greedy_choice_maximises_goodput_against_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(30):
        a, b, c = rng.uniform(0.001, 0.01), rng.uniform(0, 0.002), rng.uniform(0, 0.003)
        m = fitted(a, b, c)
        alphas = rng.uniform(0.05, 0.95, size=3)
        caps = [3, 3, 3]
        lens = choose_draft_lengths(alphas, caps, m)
        ca, cb, cc = m.coef

        def goodput(ls):
            e = 3 + sum(sum(al ** j for j in range(1, l + 1)) for al, l in zip(alphas, ls))
            return e / (ca + cb * (3 + sum(ls)) + cc * max(ls))
        best = max(goodput([x, y, z]) for x in range(4) for y in range(4) for z in range(4))
        assert goodput(lens) >= 0.97 * best


def test_calibration_starts_from_scores_and_learns_by_depth():
    from specpack.draft import Draft
    from specpack.proposers.policy.cost_model import AcceptanceCalibration

    cal = AcceptanceCalibration()
    assert cal.value([]).size == 0
    np.testing.assert_allclose(cal.value([0.9, 0.5, 0.7]), [0.9, 0.5, 0.5])  # own scores, monotone
    # a retrieval drafter scoring 1.0 everywhere; only the first 2 nodes ever accepted
    for _ in range(200):
        cal.update([1.0] * 6, 2)
    v = cal.value([1.0] * 6)
    assert v[0] > 0.95 and v[1] > 0.95 and v[2] < 0.05 and v[5] < 0.05
    assert np.all(np.diff(v) <= 0)
    # trees: a child never exceeds its parent; untouched cells keep the score
    d = Draft([1, 2, 3, 4], [-1, 0, 0, 2], probs=[0.3, 0.9, 0.2, 0.2])
    tv = cal.node_values(d)
    assert tv[1] <= tv[0] and tv[3] <= tv[2] <= tv[0]
    assert cal.node_values(Draft([1], [-1])) is None


def test_trim_keeps_the_nodes_that_pay_for_their_verification():
    from specpack.proposers.policy.cost_model import trim_to_goodput

    m = fitted(0.010, 0.001, 0.0)                # G0 = 2 / (a + 2 b) = 166.7 tok/s
    a, b, _ = m.coef
    vals = [np.array([0.9, 0.5, 0.1]), np.array([0.3, 0.05])]
    keep = trim_to_goodput(vals, m)
    # a node pays iff v > b * E / T at the time it is considered (values taken in order)
    e, t, expect = 2.0, a + 2 * b, [0, 0]
    for v, r in sorted(((v, r) for r, vs in enumerate(vals) for v in vs), reverse=True):
        if v * t <= b * e:
            break
        e, t = e + v, t + b
        expect[r] += 1
    assert keep == expect and keep[0] >= 2 and keep[1] <= 1
    assert trim_to_goodput([np.array([]), np.array([0.99])], m) == [0, 1]
    assert trim_to_goodput([np.array([0.01, 0.01])], fitted(0.001, 0.01, 0.0)) == [0]
