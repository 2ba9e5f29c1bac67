"""Multi-armed bandits that pick a speculation configuration (an *arm*).

Rewards are in ``[0, 1]`` (callers normalise accepted tokens per unit of step
cost by a running maximum, see :class:`RewardScale`).

* :class:`UCB` - UCB1 (Auer et al., 2002) as used by UCBSpec / BanditSpec
  (Hou et al., 2025, arXiv:2505.15141): play each arm once, then the arm
  maximising ``mean_a + c * sqrt(ln t / n_a)``.
* :class:`EXP3` - Auer et al., 2002 (adversarial bandits; the EXP3Spec arm
  selector of BanditSpec): ``p_a = (1 - g) w_a / sum w + g / K``; after
  playing ``a`` with reward ``r``: ``log w *= forget`` then
  ``w_a *= exp(g * r / p_a)`` (importance-weighted reward, learning rate
  ``g``). Weights are kept in log space and re-centred, so they never
  overflow; ``forget`` < 1 discounts old evidence (time constant
  ``1 / (1 - forget)`` updates) so it tracks switching streams.
* :class:`Thompson` - Beta-Bernoulli Thompson sampling (Thompson, 1933;
  Agrawal & Goyal, 2012): a reward ``r`` in ``[0, 1]`` is turned into a
  Bernoulli trial with success probability ``r``; each arm keeps
  ``Beta(1 + s_a, 1 + f_a)``; play ``argmax`` of one posterior draw each.

All keep O(K) state.
"""

from __future__ import annotations

import math

import numpy as np


class Bandit:
    name = "bandit"

    def __init__(self, num_arms: int, seed: int = 0):
        if num_arms < 1:
            raise ValueError(f"a bandit needs >= 1 arm, got {num_arms}")
        self.k = num_arms
        self.rng = np.random.default_rng(seed)
        self.counts = np.zeros(num_arms, np.int64)
        self.sums = np.zeros(num_arms, np.float64)

    def select(self) -> int:
        raise NotImplementedError

    def update(self, arm: int, reward: float) -> None:
        if not 0 <= arm < self.k:
            raise IndexError(f"arm {arm} out of range 0..{self.k - 1}")
        r = min(1.0, max(0.0, float(reward)))
        self.counts[arm] += 1
        self.sums[arm] += r
        self._update(arm, r)

    def _update(self, arm: int, reward: float) -> None:
        pass

    @property
    def means(self) -> np.ndarray:
        return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), 0.0)

    def best_arm(self) -> int:
        """The arm the bandit currently believes best (for reports)."""
        return int(np.argmax(self.means))


class UCB(Bandit):
    name = "ucb"

    def __init__(self, num_arms: int, seed: int = 0, c: float = 1.0):
        super().__init__(num_arms, seed)
        self.c = c

    def select(self) -> int:
        untried = np.flatnonzero(self.counts == 0)
        if untried.size:
            return int(untried[0])
        t = self.counts.sum()
        bonus = self.c * np.sqrt(math.log(t) / self.counts)
        return int(np.argmax(self.means + bonus))


class EXP3(Bandit):
    name = "exp3"

    def __init__(self, num_arms: int, seed: int = 0, gamma: float = 0.1, forget: float = 0.995):
        super().__init__(num_arms, seed)
        if not 0 < gamma <= 1:
            raise ValueError(f"EXP3 gamma must be in (0, 1], got {gamma}")
        self.gamma = gamma
        self.forget = forget
        self.log_w = np.zeros(num_arms, np.float64)

    def probabilities(self) -> np.ndarray:
        w = np.exp(self.log_w - self.log_w.max())
        return (1 - self.gamma) * w / w.sum() + self.gamma / self.k

    def select(self) -> int:
        return int(self.rng.choice(self.k, p=self.probabilities()))

    def _update(self, arm: int, reward: float) -> None:
        p = self.probabilities()[arm]
        self.log_w *= self.forget
        self.log_w[arm] += self.gamma * reward / p
        self.log_w -= self.log_w.max()


class Thompson(Bandit):
    name = "thompson"

    def __init__(self, num_arms: int, seed: int = 0):
        super().__init__(num_arms, seed)
        self.alpha = np.ones(num_arms)
        self.beta = np.ones(num_arms)

    def select(self) -> int:
        return int(np.argmax(self.rng.beta(self.alpha, self.beta)))

    def _update(self, arm: int, reward: float) -> None:
        if self.rng.random() < reward:
            self.alpha[arm] += 1
        else:
            self.beta[arm] += 1


BANDITS = {"ucb": UCB, "exp3": EXP3, "thompson": Thompson}


class RewardScale:
    """Maps raw rewards (tokens per second of step cost) into ``[0, 1]``.

    Divides by a slowly decaying running maximum, so the scale needs no
    per-machine constant and adapts when the machine gets faster or slower.
    """

    def __init__(self, decay: float = 0.999):
        self.decay = decay
        self.peak = 0.0

    def __call__(self, raw: float) -> float:
        self.peak = max(raw, self.peak * self.decay)
        return raw / self.peak if self.peak > 0 else 0.0
