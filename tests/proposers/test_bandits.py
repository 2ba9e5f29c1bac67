"""Bandits on simulated reward streams; regret against the known best arm."""

import numpy as np
import pytest

from specpack.proposers.policy.bandits import EXP3, UCB, RewardScale, Thompson

MEANS = np.array([0.30, 0.55, 0.45, 0.20])   # arm 1 is best


def play(bandit, means_at, steps, seed=0):
    rng = np.random.default_rng(seed + 12345)  # independent of the bandit's own stream
    regret, picks = 0.0, []
    for t in range(steps):
        m = means_at(t)
        arm = bandit.select()
        reward = float(rng.random() < m[arm])   # Bernoulli rewards
        bandit.update(arm, reward)
        regret += m.max() - m[arm]
        picks.append(arm)
    return regret, np.array(picks)


@pytest.mark.parametrize("cls", [UCB, Thompson])
def test_converges_to_best_arm_of_stationary_stream(cls):
    for seed in range(3):
        b = cls(len(MEANS), seed=seed)
        regret, picks = play(b, lambda t: MEANS, 3000, seed)
        # uniform play would cost 3000 * (0.55 - mean) = 630; sublinear regret is far below
        uniform = 3000 * (MEANS.max() - MEANS.mean())
        assert regret < 0.25 * uniform, (cls.name, seed, regret)
        assert np.mean(picks[-500:] == 1) > 0.8
        assert b.best_arm() == 1


PHASE_A = np.array([0.2, 0.7, 0.4, 0.1])   # arm 1 best
PHASE_B = np.array([0.7, 0.1, 0.4, 0.2])   # arm 0 best


def switching(t):
    return PHASE_A if (t // 1500) % 2 == 0 else PHASE_B


def test_exp3_tracks_switching_stream():
    uniform = 6000 * np.mean([PHASE_A.max() - PHASE_A.mean(), PHASE_B.max() - PHASE_B.mean()])
    for seed in range(3):
        b = EXP3(4, seed=seed)          # defaults: gamma 0.1, forget 0.995
        regret, picks = play(b, switching, 6000, seed)
        assert regret < 0.35 * uniform, (seed, regret, uniform)
        # within 500 steps of each switch it follows the new best arm
        assert np.mean(picks[1000:1500] == 1) > 0.6
        assert np.mean(picks[2000:3000] == 0) > 0.6
        assert np.mean(picks[3500:4500] == 1) > 0.6
        assert np.mean(picks[5000:6000] == 0) > 0.6


def test_exp3_without_forgetting_is_slow_to_switch():
    """The forgetting factor is what makes EXP3 track (the test above can fail)."""
    fast = sum(play(EXP3(4, seed=s), switching, 6000, s)[0] for s in range(3))
    slow = sum(play(EXP3(4, seed=s, forget=1.0), switching, 6000, s)[0] for s in range(3))
    assert fast < 0.7 * slow, (fast, slow)


def test_ucb_plays_every_arm_first_and_rejects_bad_arm():
    b = UCB(3)
    assert [b.select() for _ in range(1)] == [0]
    for a in range(3):
        b.update(a, 0.5)
    with pytest.raises(IndexError):
        b.update(3, 1.0)
    with pytest.raises(ValueError):
        UCB(0)


def test_rewards_are_clipped_and_exp3_weights_stay_finite():
    b = EXP3(2, gamma=0.5)
    for _ in range(100000):
        b.update(0, 5.0)      # clipped to 1
    p = b.probabilities()
    assert np.isfinite(p).all() and p.sum() == pytest.approx(1.0) and p[0] > p[1]


def test_reward_scale_maps_to_unit_interval():
    s = RewardScale(decay=0.9)
    assert s(10.0) == 1.0 and s(5.0) == pytest.approx(5 / 9)
    assert s(0.0) == 0.0
    assert 0 <= s(3.0) <= 1
