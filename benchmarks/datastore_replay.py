"""How well a datastore predicts a model's own outputs (REST diagnosis).

    python benchmarks/datastore_replay.py --bench-json bench-retrieval/bench.json \
        --datastore /work/ds-stdlib --tokenizer ../shared/models/stdlib-target

Takes the no-speculation outputs recorded by ``specpack bench`` (``raw.none``
phases), replays every prefix of every output through the datastore
proposer (budget 8), and reports per category the mean number of draft
tokens the output actually continues with (what a chain verifier would
accept) and the median context match length of the lookups.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench-json", required=True)
    ap.add_argument("--datastore", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--workload", default=None, help="the bench's workload (default: built-in)")
    ap.add_argument("--budget", type=int, default=8)
    a = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from specpack.bench.workload import BUILTIN_DIR, by_category, load_workload
    from specpack.config import DatastoreConfig
    from specpack.protocols import Budget, RequestView
    from specpack.proposers.retrieval.datastore import DatastoreProposer

    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    cats = by_category(load_workload(a.workload or str(BUILTIN_DIR / "default.jsonl")))
    prop = DatastoreProposer(DatastoreConfig(datastore_path=a.datastore), max_nodes=a.budget)
    with open(a.bench_json) as f:
        doc = json.load(f)
    seen = set()
    for ph in doc["raw"]["none"]["phases"]:
        cat = ph["category"]
        if cat in seen or cat not in cats:
            continue
        seen.add(cat)
        accepted, steps, matches = 0, 0, []
        for req, out in zip(cats[cat], ph["requests"]):
            prompt = tok(req.prompt, add_special_tokens=False).input_ids
            o = out["tokens"]
            for i in range(len(o) - a.budget):
                ctx = np.array(prompt + o[:i], np.int32)
                path = prop.propose([RequestView("x", ctx, Budget(a.budget, a.budget))])[0]
                n = 0
                for t in path.best_path_tokens().tolist():
                    if o[i + n] != t:
                        break
                    n += 1
                accepted += n
                steps += 1
                matches.append(prop.last_match)
        print(f"{cat}: mean accepted draft tokens per step {accepted / max(steps, 1):.2f}, "
              f"median context match {np.median(matches):.0f} tokens ({steps} steps)")


if __name__ == "__main__":
    main()
