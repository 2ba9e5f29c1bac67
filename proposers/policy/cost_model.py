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
    """Exponentially weighted least squares for ``T = a + b N + c D``.

    Decisions use :attr:`decision_coef`: the slopes' lower confidence bounds
    ``max(0, b - z * se(b))`` (same for ``c``), with ``se`` from the weighted
    residual variance and ``(X'X)^-1``. When the steps seen so far barely
    vary in ``N`` (e.g. speculation has been off for a while, or a phase has
    just begun), ``se(b)`` is large, the bound is low and drafting resumes,
    which is what makes ``b`` measurable again (optimism under uncertainty);
    once drafts vary, the bound tightens to the fitted cost.
    """

    def __init__(self, forget: float = 0.98, ridge: float = 1e-6, z: float = 2.0):
        self.forget = forget
        self.ridge = ridge
        self.z = z
        self.xtx = np.zeros((3, 3))
        self.xty = np.zeros(3)
        self.yy = 0.0
        self.n = 0
        self.coef = np.zeros(3)
        self.decision_coef = np.zeros(3)

    def observe(self, num_tokens: int, max_depth: int, seconds: float) -> None:
        if seconds <= 0 or not np.isfinite(seconds):
            return
        x = np.array([1.0, float(num_tokens), float(max_depth)])
        self.xtx = self.forget * self.xtx + np.outer(x, x)
        self.xty = self.forget * self.xty + x * seconds
        self.yy = self.forget * self.yy + seconds * seconds
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
        # lower confidence bounds of the slopes for decisions
        n_eff = self.xtx[0, 0]
        rss = max(self.yy - 2 * coef @ self.xty + coef @ self.xtx @ coef, 0.0)
        var = rss / max(n_eff - 3.0, 1.0)
        try:
            cov = var * np.linalg.inv(a)
        except np.linalg.LinAlgError:
            cov = np.full((3, 3), np.inf)
        se = np.sqrt(np.maximum(np.diag(cov), 0.0))
        dec = coef.copy()
        dec[1:] = np.maximum(coef[1:] - self.z * se[1:], 0.0)
        self.decision_coef = dec

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
    a, b, c = (float(x) for x in model.decision_coef)
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


def _unit(scores) -> np.ndarray:
    """Scores as a float64 array clamped to [0, 1] (ufuncs: cheaper than np.clip
    on the few nodes of a draft)."""
    p = np.array(scores, np.float64)
    np.minimum(p, 1.0, out=p)
    np.maximum(p, 0.0, out=p)
    return p


class AcceptanceCalibration:
    """``P(draft node accepted | its score p and its depth j)``, learned online.

    Every drafter scores its nodes (suffix/datastore counts, Token
    Recycling's rank prior, the draft model's ``prod q``), but the scores are
    not probabilities of acceptance: retrieval counts are over-confident on
    text the corpus has not seen (a continuation seen once scores 1.0 at
    every depth), rank priors are not probabilities at all. Nodes are binned
    by score (edges :attr:`EDGES`) and depth (:attr:`DEPTH_EDGES`); each
    cell keeps exponentially discounted counts of nodes drafted and nodes
    accepted (node ``j`` of a verified path counts as accepted when the
    first ``j`` were), and the estimate is shrunk to the drafter's own score::

        value(p, j) = (accepted_cell + m * p) / (drafted_cell + m),   m = prior_weight

    so an uncalibrated drafter starts from its own numbers and moves to the
    observed rates as evidence accrues. Values are made non-increasing from
    parent to child (a node cannot be more likely accepted than its parent).
    """

    EDGES = np.array([0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95,
                      1.0 + 1e-9])
    DEPTH_EDGES = np.array([1, 2, 3, 4, 5, 7, 9, 13])

    def __init__(self, prior_weight: float = 2.0, forget: float = 0.99):
        self.m = prior_weight
        self.forget = forget
        shape = (self.DEPTH_EDGES.size, self.EDGES.size - 1)
        self.drafted = np.zeros(shape)
        self.accepted = np.zeros(shape)

    def _cells(self, p: np.ndarray, depths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # (ufuncs in place: np.clip's wrapper costs more than the work on ~8 nodes)
        sb = np.searchsorted(self.EDGES, p, side="right") - 1
        np.minimum(sb, self.EDGES.size - 2, out=sb)
        np.maximum(sb, 0, out=sb)
        db = np.searchsorted(self.DEPTH_EDGES, depths, side="right") - 1
        np.minimum(db, self.DEPTH_EDGES.size - 1, out=db)
        np.maximum(db, 0, out=db)
        return db, sb

    def _raw(self, p: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """Shrunk estimate per node (``p`` already within [0, 1])."""
        cell = self._cells(p, depths)
        return (self.accepted[cell] + self.m * p) / (self.drafted[cell] + self.m)

    def value(self, path_probs) -> np.ndarray:
        """Calibrated acceptance probability of each node of one path, in order."""
        p = _unit(path_probs)
        if p.size == 0:
            return p
        return np.minimum.accumulate(self._raw(p, np.arange(1, p.size + 1)))

    def node_values(self, draft) -> np.ndarray | None:
        """Calibrated value of every node of a draft tree (parents first), made
        non-increasing from parent to child; None when the draft has no scores."""
        if draft.probs is None:
            return None
        if draft.is_chain:
            return self.value(draft.probs)
        v = self._raw(_unit(draft.probs), draft.depths)
        for i, par in enumerate(draft.parents.tolist()):
            if par >= 0 and v[par] < v[i]:
                v[i] = v[par]
        return v

    def best_first_value(self) -> float:
        """The highest value a first-level node can have (over score bins, each
        at its upper edge): if even that does not pay, drafting cannot."""
        p = np.minimum(self.EDGES[1:], 1.0)
        return float(np.max((self.accepted[0] + self.m * p) / (self.drafted[0] + self.m)))

    def update(self, path_probs, accepted: int) -> None:
        """One verified path: its nodes' scores and how many were accepted."""
        self.update_batch([path_probs], [accepted])

    def update_batch(self, paths, accepted) -> None:
        """The verified paths of one step (scores, accepted counts); counts are
        discounted by ``forget`` once per step."""
        ps, ds, acc = [], [], []
        for p, k in zip(paths, accepted):
            n = len(p)
            if n:
                ps.append(p)
                ds.append(np.arange(1, n + 1))
                acc.append(np.arange(n) < k)
        if not ps:
            return
        p = _unit(np.concatenate(ps))
        db, sb = self._cells(p, np.concatenate(ds))
        self.drafted *= self.forget
        self.accepted *= self.forget
        np.add.at(self.drafted, (db, sb), 1.0)
        hit = np.concatenate(acc)
        np.add.at(self.accepted, (db[hit], sb[hit]), 1.0)


def trim_to_goodput(values: list[np.ndarray], model: StepCostModel,
                    depth_drafted: int = 0) -> list[int]:
    """How many nodes of each request's draft to verify (after drafting).

    ``values[r][i]`` is the expected number of tokens node ``i`` of request
    ``r`` yields (its acceptance probability; non-increasing from parent to
    child). Drafting is done, so its cost is sunk: the step already costs
    ``T = a + b n + c D`` for ``n`` requests and drafts ``D`` deep, and
    yields ``E = n`` tokens for sure. Verifying one more node costs ``b`` and
    yields its value ``v``; it raises goodput ``E / T`` iff ``v / b > E / T``.
    Taking nodes in decreasing value while that holds maximises ``E / T``
    (uniform costs: the optimal set is a top-value prefix, and parents come
    before their children because values do not increase along a path).
    Returns the number of nodes kept per request (the top values of each).
    """
    a, b, c = (float(x) for x in model.decision_coef)
    n = len(values)
    e, t = float(n), a + b * n + c * depth_drafted
    if b <= 0:
        return [len(v) for v in values]
    order = sorted(((float(v), r, i) for r, vals in enumerate(values)
                    for i, v in enumerate(vals)), key=lambda x: (-x[0], x[2]))
    keep = [0] * n
    for v, r, i in order:
        if v <= 0 or v * t <= b * e:
            break
        e += v
        t += b
        keep[r] += 1
    return keep
