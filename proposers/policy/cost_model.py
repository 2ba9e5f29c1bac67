"""Online step-cost model and the batch-aware speculate/don't decision.

Step time is modelled as ``T(N, D) = a + b * N + c * D``: ``N`` tokens
verified by the target in the step (one per request plus every draft
token), ``D`` the deepest draft (sequential drafter forwards). ``a, b, c``
are fitted online by exponentially weighted least squares from measured
steps (in vLLM: the time between successive ``propose`` calls), so no
per-machine constant is needed.

Decision (goodput greedy). With the batch's expected emitted tokens ``E``
and step time ``T``, goodput is ``G = E / T``. Adding a draft token at depth
``j`` of request ``r`` adds ``alpha_r ** j`` expected tokens (probability
that it and all its ancestors are accepted, per-request acceptance rate
``alpha_r``) and ``b`` (+ ``c`` when it deepens the batch) seconds. Tokens
are taken in decreasing value while ``gain / cost > G``, which is exactly
the condition for the addition to raise ``G``. At low load ``a`` dominates
``T`` and almost every token pays; at high load ``T ~ b * N`` and only
near-certain tokens do; when none do, the step runs without speculation
(auto-off). A small exploration share keeps the fit informed.
"""

from __future__ import annotations

import numpy as np


class StepCostModel:
    """Exponentially weighted least squares for ``T = a + b N + c D``."""

    def __init__(self, forget: float = 0.98, ridge: float = 1e-6):
        self.forget = forget
        self.ridge = ridge
        self.xtx = np.zeros((3, 3))
        self.xty = np.zeros(3)
        self.n = 0
        self.coef = np.zeros(3)

    def observe(self, num_tokens: int, max_depth: int, seconds: float) -> None:
        if seconds <= 0 or not np.isfinite(seconds):
            return
        x = np.array([1.0, float(num_tokens), float(max_depth)])
        self.xtx = self.forget * self.xtx + np.outer(x, x)
        self.xty = self.forget * self.xty + x * seconds
        self.n += 1
        a = self.xtx + np.diag(self.ridge * np.diag(self.xtx) + 1e-12)
        try:
            coef = np.linalg.solve(a, self.xty)
        except np.linalg.LinAlgError:
            return
        # costs cannot be negative; refit the intercept when a slope clips
        coef[1:] = np.maximum(coef[1:], 0.0)
        mean_x = self.xtx[0] / max(self.xtx[0, 0], 1e-12)
        mean_y = self.xty[0] / max(self.xtx[0, 0], 1e-12)
        coef[0] = max(mean_y - coef[1] * mean_x[1] - coef[2] * mean_x[2], 1e-9)
        self.coef = coef

    @property
    def ready(self) -> bool:
        return self.n >= 4

    def predict(self, num_tokens: int, max_depth: int) -> float:
        a, b, c = self.coef
        return float(a + b * num_tokens + c * max_depth)


def choose_draft_lengths(alphas, caps, model: StepCostModel | None) -> list[int]:
    """Goodput-greedy draft lengths (see module docstring).

    ``alphas[r]`` is request ``r``'s per-token acceptance estimate, ``caps[r]``
    the most its policy allows. Depth by depth, the requests still drafting
    are ranked by the value ``alpha_r ** j`` of their next token, and the
    prefix of that ranking that maximises ``(E + gains) / (T + b |S| + c)``
    is kept (the deeper drafter pass costs ``c`` once for the whole batch);
    drafting stops at the first depth where the best prefix is empty.
    Returns lengths ``<= caps`` (0 = don't speculate). Without a ready model
    every request gets its cap.
    """
    caps = [max(0, int(c)) for c in caps]
    if model is None or not model.ready:
        return caps
    a, b, c = (float(x) for x in model.coef)
    n = len(caps)
    alphas = [min(max(float(x), 0.0), 1.0) for x in alphas]
    tokens = float(n)           # expected emitted tokens: one per request for sure
    t = a + b * n               # predicted step time
    out = [0] * n
    value = [1.0] * n           # alpha_r ** depth drafted so far
    active = [r for r in range(n) if caps[r] > 0 and alphas[r] > 0]
    depth = 0
    while active:
        depth += 1
        cand = sorted(active, key=lambda r: -value[r] * alphas[r])
        best_k, best_g = 0, tokens / t
        e, tt = tokens, t + c
        for i, r in enumerate(cand):
            e += value[r] * alphas[r]
            tt += b
            if e / tt > best_g:
                best_k, best_g = i + 1, e / tt
        if best_k == 0:
            break
        chosen = cand[:best_k]
        for r in chosen:
            value[r] *= alphas[r]
            tokens += value[r]
            out[r] = depth
        t += c + b * best_k
        active = [r for r in chosen if caps[r] > depth]
    return out
