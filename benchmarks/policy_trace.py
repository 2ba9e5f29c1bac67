"""Summarise policy traces: what the cost model predicted, what was decided.

    SPECPACK_POLICY_TRACE=1 specpack bench ... --out OUT
    python benchmarks/policy_trace.py OUT

``specpack bench`` (vLLM offline engine) writes one JSONL trace per method
and phase under ``OUT/specpack-bench-*/traces/<method>/<phase>.trace.jsonl``
when ``SPECPACK_POLICY_TRACE=1``: per step the batch, the caps, the lengths
decided before drafting, the nodes kept after drafting, the accepted
counts, the cost model's coefficients, its prediction for the step and the
measured step time. This prints, per trace:

* ``fit err`` - median relative error of the step-time prediction made
  *before* the step was observed (``|pred - measured| / measured``);
* ``a, b, c`` - the fitted ``T = a + b N + c D`` at the end of the phase (ms);
* ``cap``, ``pre``, ``kept``, ``acc`` - mean nodes per request-step allowed
  by the policy's cap, decided before drafting, verified, accepted;
* ``off`` - share of steps that verified no draft node;
* ``hit`` - accepted / kept (precision of what was verified).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics


def summarise(path: str) -> dict:
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    errs, caps, pre, kept, acc, off, reqs = [], 0, 0, 0, 0, 0, 0
    for r in recs:
        if "measured_s" in r and r.get("pred_before_s") and r["measured_s"] > 0:
            errs.append(abs(r["pred_before_s"] - r["measured_s"]) / r["measured_s"])
        n = r["batch"]
        reqs += n
        caps += r["caps"]
        pre += sum(r["lengths"])
        k = sum(r.get("kept", r["lengths"]))
        kept += k
        acc += sum(r.get("accepted", []))
        off += int(k == 0)
    coef = recs[-1]["coef"] if recs else [0, 0, 0]
    return {"steps": len(recs), "fit_err": statistics.median(errs) if errs else float("nan"),
            "coef_ms": [round(1e3 * x, 3) for x in coef],
            "cap": caps / max(reqs, 1), "pre": pre / max(reqs, 1), "kept": kept / max(reqs, 1),
            "acc": acc / max(reqs, 1), "off": off / max(len(recs), 1),
            "hit": acc / max(kept, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the --out directory of a traced specpack bench run")
    a = ap.parse_args()
    files = sorted(glob.glob(os.path.join(a.out, "specpack-bench-*", "traces", "*", "*.jsonl")))
    if not files:
        raise SystemExit(f"no traces under {a.out} (run the bench with SPECPACK_POLICY_TRACE=1)")
    print("| method | phase | steps | fit err | a, b, c (ms) | cap | pre | kept | acc | off | hit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for f in files:
        s = summarise(f)
        method = os.path.basename(os.path.dirname(f))
        phase = os.path.basename(f).removesuffix(".trace.jsonl")
        print(f"| {method} | {phase} | {s['steps']} | {s['fit_err']:.2f} | "
              f"{', '.join(map(str, s['coef_ms']))} | {s['cap']:.2f} | {s['pre']:.2f} | "
              f"{s['kept']:.2f} | {s['acc']:.2f} | {100 * s['off']:.0f} % | {s['hit']:.2f} |")


if __name__ == "__main__":
    main()
