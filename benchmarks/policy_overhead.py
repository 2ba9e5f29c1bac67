"""Per-step CPU cost of the policy layer around a proposer (no engine).

    python benchmarks/policy_overhead.py

Drives SuffixDecoding alone, wrapped in a ``fixed`` policy, and with
auto-off, for 200 steps at batch 1, 16 and 64 (repetitive contexts so that
drafts are long), feeding feedback and step times as an engine would, and
prints milliseconds per step. What the wrapper adds is paid on every engine
step, so it must stay small against a step (~7 ms at batch 1, ~45 ms at 64
on the 2-core CPU with the stdlib target).
"""

from __future__ import annotations

import time

import numpy as np

from specpack.protocols import Budget, Feedback, RequestView
from specpack.registry import build_pipeline


def per_step_ms(batch: int, policy: dict | None, steps: int = 200) -> float:
    raw: dict = {"suffix_decoding_max_spec_factor": 2.0}
    if policy is not None:
        raw["policy"] = policy
    prop = build_pipeline(raw, method="suffix", max_nodes=8)
    rng = np.random.default_rng(0)
    ctx = {f"r{i}": np.tile(rng.integers(3, 500, size=30), 5).astype(np.int32)
           for i in range(batch)}
    t0 = time.perf_counter()
    for _ in range(steps):
        views = [RequestView(k, c, Budget(8, 8)) for k, c in ctx.items()]
        drafts = prop.propose(views)
        prop.observe([Feedback(k, len(d), min(2, len(d))) for k, d in zip(ctx, drafts)])
        prop.observe_step(batch + sum(len(d) for d in drafts),
                          max((len(d) for d in drafts), default=0), 0.01 + 0.0003 * batch)
        for k in ctx:
            ctx[k] = np.r_[ctx[k], ctx[k][-30]].astype(np.int32)
    return 1e3 * (time.perf_counter() - t0) / steps


def main() -> None:
    print("| batch | suffix alone | + fixed policy | + auto-off |")
    print("|---|---|---|---|")
    for batch in (1, 16, 64):
        cells = [per_step_ms(batch, p) for p in
                 (None, {"kind": "fixed", "auto_off": False}, {"kind": "fixed", "auto_off": True})]
        print(f"| {batch} | " + " | ".join(f"{c:.2f} ms" for c in cells) + " |")


if __name__ == "__main__":
    main()
