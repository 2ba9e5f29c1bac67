"""Datastore build at scale: time, peak memory and index size for N tokens.

    python benchmarks/datastore_build.py --tokens 100000000 --out /tmp/ds-100m

The corpus is the Python standard library tokenized once with the given
tokenizer (default: the embedded model's), repeated with a per-copy token
shift until ``--tokens`` is reached (so copies are not byte-identical and the
suffix sort does real work), split into 64K-token documents. Then one lookup
timing on the built index. Peak memory is the process's max RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sysconfig
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100_000_000)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from specpack.proposers.retrieval.corpus_index import (Datastore, build_datastore, iter_texts,
                                              tokenize_corpus)

    if a.tokenizer is None:
        from specpack.models import default_target

        a.tokenizer = default_target()
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    base = np.concatenate(list(tokenize_corpus(iter_texts(files), tok)))
    vocab = int(len(tok))
    reps = -(-a.tokens // base.size)

    def docs():
        made = 0
        for r in range(reps):
            shifted = (base.astype(np.int64) + 7 * r) % vocab
            for s in range(0, shifted.size, 65536):
                chunk = shifted[s:s + 65536][: a.tokens - made]
                if chunk.size == 0:
                    return
                made += chunk.size
                yield chunk.astype(np.int32)

    t0 = time.perf_counter()
    meta = build_datastore(docs(), a.out, tokenizer=a.tokenizer)
    build_s = time.perf_counter() - t0
    store = Datastore(a.out)
    q = base[1000:1016].copy()
    t1 = time.perf_counter()
    for _ in range(100):
        store.lookup(q)
    lookup_ms = (time.perf_counter() - t1) * 10
    print(json.dumps({"tokens": meta["num_tokens"], "documents": meta["num_documents"],
                      "build_s": round(build_s, 1), "index_bytes": store.nbytes_on_disk,
                      "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                            / 2**20, 2),
                      "lookup_ms": round(lookup_ms, 3)}, indent=1))


if __name__ == "__main__":
    main()
