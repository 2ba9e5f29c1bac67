"""Issue-13 targets from ``specpack bench`` outputs: policies against fixed lengths.

    python benchmarks/policy_targets.py OUT [OUT ...]

For each bench output directory made with
``--methods specpack:suffix@k2,specpack:suffix@k4,specpack:suffix@k8,specpack:suffix@off,specpack:suffix@exp3+off,specpack:suffix@thompson+off``
prints, per category and concurrency, tok/s as a multiple of no speculation
(tau in brackets) and the ratios the targets are stated in: ``@off`` / best
fixed length, ``@off`` / none, best bandit with auto-off / best fixed
length, ``@off`` / vLLM ngram. Fails if any output differs from no
speculation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FIXED = ("specpack:suffix@k2", "specpack:suffix@k4", "specpack:suffix@k8")
BANDITS = ("specpack:suffix@exp3+off", "specpack:suffix@thompson+off")
COLUMNS = FIXED + ("specpack:suffix@off",) + BANDITS + ("vllm:ngram",)


def table(out_dir: str) -> str:
    doc = json.loads((Path(out_dir) / "bench.json").read_text())
    idx = {(r["category"], r["concurrency"], r["method"]): r for r in doc["rows"]}
    lines = [f"{out_dir}: {doc['meta']['workload']}",
             "| category | conc. | k2 | k4 | k8 | @off | @exp3+off | @thompson+off | ngram | "
             "off/best fixed | off/none | best bandit+off/best fixed | off/ngram |",
             "|" + "---|" * 13]
    for cat, c in sorted({(r["category"], r["concurrency"]) for r in doc["rows"]}):
        none = idx[(cat, c, "none")]["output_tok_s"]
        x = {}
        for m in COLUMNS:
            r = idx[(cat, c, m)]
            if not r["greedy_match"]:
                raise SystemExit(f"{out_dir}: {m} {cat} c={c} differs from no speculation")
            x[m] = (r["output_tok_s"] / none, r["tau"])
        best = max(x[m][0] for m in FIXED)
        off = x["specpack:suffix@off"][0]
        bandit = max(x[m][0] for m in BANDITS)
        lines.append(f"| {cat} | {c} | " + " | ".join(f"{s:.2f} ({t:.2f})" for s, t in
                                                       (x[m] for m in COLUMNS))
                     + f" | {off / best:.2f} | {off:.2f} | {bandit / best:.2f} | "
                       f"{off / x['vllm:ngram'][0]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="+", help="specpack bench --out directories")
    for d in ap.parse_args().out:
        print(table(d) + "\n")


if __name__ == "__main__":
    main()
