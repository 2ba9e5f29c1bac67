"""Corpus datastore for retrieval drafts (REST, He et al., 2024, arXiv:2311.08252).

On disk (one directory, every file deterministic, so building twice from the
same input gives byte-identical files):

* ``tokens.npy`` - int32 token ids of all documents, each followed by the
  separator ``-1`` (a match never crosses a document boundary);
* ``index.npy`` - the suffix array truncated at ``sort_depth`` tokens: the
  start positions of every suffix, sorted by their first ``sort_depth``
  tokens (ties by position). Any query of at most ``sort_depth`` tokens
  matches one contiguous range of it. int32 below 2**31 tokens, else int64;
* ``meta.json`` - format version, token count, documents, ``sort_depth``,
  the tokenizer it was built with.

Both arrays are memory-mapped at load (``np.load(mmap_mode="r")``): engine
processes on one machine share the page cache instead of copying the index.

Build: prefix doubling on dense ranks (``rank_{2h}(i) = (rank_h(i),
rank_h(i + h))``), ``log2(sort_depth)`` rounds of one ``np.unique`` each,
then one stable argsort: ``O(n log n)`` time, about 40 bytes per token of
peak memory (100M tokens: ~4 GB).

Lookup (REST): for ``m`` from ``max_match`` (16) down to ``min_match`` (2),
binary-search the range of suffixes starting with the last ``m`` context
tokens; at the first ``m`` with matches, take up to ``max_matches``
occurrences (evenly spaced over the range, so the sample is deterministic),
read the ``continuation_length`` (10) tokens after each, and count them in a
prefix trie; the draft tree keeps the most frequent chain (what chain-only
engines verify) and then the most frequent other prefixes, ``max_nodes`` in
all. A node's probability is ``count(prefix) / matches``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np
from numba import njit

from specpack.token_trie import TokenTrie

FORMAT_VERSION = 1
SEPARATOR = -1


# ---------------------------------------------------------------- build
def truncated_suffix_array(tokens: np.ndarray, depth: int = 16) -> np.ndarray:
    """Start positions sorted by their first ``depth`` tokens (ties: position).

    Positions past the end compare smaller than any token, as in a suffix
    array. ``depth`` is rounded up to a power of two.
    """
    n = tokens.size
    if n == 0:
        return np.zeros(0, np.int64)
    _, rank = np.unique(tokens, return_inverse=True)
    rank = rank.astype(np.int64) + 1          # 0 is reserved for "past the end"
    h = 1
    while h < depth:
        nxt = np.zeros(n, np.int64)
        if h < n:
            nxt[: n - h] = rank[h:]
        key = rank * (n + 2) + nxt            # < (n + 2)^2 fits int64 for n < 3e9
        del nxt
        _, rank = np.unique(key, return_inverse=True)
        del key
        rank = rank.astype(np.int64) + 1
        h *= 2
    return np.argsort(rank, kind="stable")


def build_datastore(documents: Iterable[Iterable[int]], out_dir: str | os.PathLike, *,
                    sort_depth: int = 16, tokenizer: str | None = None) -> dict:
    """Write a datastore from token-id documents; returns its ``meta``."""
    chunks = []
    n_docs = 0
    for doc in documents:
        arr = np.asarray(list(doc) if not isinstance(doc, np.ndarray) else doc, np.int64)
        if arr.size == 0:
            continue
        if arr.min() < 0 or arr.max() >= 2**31 - 1:
            raise ValueError("token ids must be in [0, 2**31 - 1)")
        chunks.append(arr.astype(np.int32))
        chunks.append(np.array([SEPARATOR], np.int32))
        n_docs += 1
    tokens = np.concatenate(chunks) if chunks else np.zeros(0, np.int32)
    sa = truncated_suffix_array(tokens, sort_depth)
    sa = sa.astype(np.int32 if tokens.size < 2**31 else np.int64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "tokens.npy", tokens)
    np.save(out / "index.npy", sa)
    meta = {"format_version": FORMAT_VERSION, "num_tokens": int(tokens.size),
            "num_documents": n_docs, "sort_depth": int(sort_depth),
            "tokenizer": tokenizer}
    (out / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n")
    return meta


# ---------------------------------------------------------------- lookup kernels
@njit(cache=True)
def _compare(tokens, pos, query, m):
    """-1 / 0 / +1: suffix at ``pos`` (first m tokens) vs ``query[:m]``."""
    n = tokens.size
    for j in range(m):
        if pos + j >= n:
            return -1
        t = tokens[pos + j]
        q = query[j]
        if t < q:
            return -1
        if t > q:
            return 1
    return 0


@njit(cache=True)
def _range(tokens, sa, query, m):
    lo, hi = 0, sa.size
    while lo < hi:                      # first suffix >= query
        mid = (lo + hi) // 2
        if _compare(tokens, sa[mid], query, m) < 0:
            lo = mid + 1
        else:
            hi = mid
    start = lo
    hi = sa.size
    while lo < hi:                      # first suffix > query
        mid = (lo + hi) // 2
        if _compare(tokens, sa[mid], query, m) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return start, lo


@njit(cache=True)
def _lookup(tokens, sa, context, max_match, min_match, max_matches, cont_len, out):
    """Longest matching suffix; fills ``out[k, :]`` with continuations (-1 padded).

    Returns (match length, number of continuations written)."""
    c = context.size
    for m in range(min(max_match, c), min_match - 1, -1):
        query = context[c - m:]
        lo, hi = _range(tokens, sa, query, m)
        count = hi - lo
        if count <= 0:
            continue
        k = min(count, max_matches)
        written = 0
        for i in range(k):
            idx = lo + (i * count) // k
            p = sa[idx] + m
            row_has = False
            for j in range(cont_len):
                out[written, j] = -1
            for j in range(cont_len):
                if p + j >= tokens.size:
                    break
                t = tokens[p + j]
                if t < 0:
                    break
                out[written, j] = t
                row_has = True
            if row_has:
                written += 1
        if written > 0:
            return m, written
    return 0, 0


def continuation_tree(conts: np.ndarray, max_nodes: int):
    """Prefix trie of continuation rows -> (tokens, parents, probs) of at most
    ``max_nodes`` nodes, parents first.

    The most frequent root-to-leaf chain (most frequent child at every level)
    is kept first - it is what a chain-only engine verifies - then the most
    frequent remaining prefixes fill the budget (ties: shallower, first seen);
    a node is kept only with its parent.
    """
    rows = conts.shape[0]
    if rows == 0 or max_nodes <= 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    trie = TokenTrie()
    cnt = [rows]
    for r in range(rows):
        u = 0
        for t in conts[r]:
            t = int(t)
            if t < 0:
                break
            u, added = trie.child(u, t)
            if added:
                cnt.append(0)
            cnt[u] += 1
    children, par, depth = trie.children, trie.par, trie.depth
    keep: list[int] = []
    kept: set[int] = set()
    u = 0
    while children[u] and len(keep) < max_nodes:      # the most frequent chain
        u = max(children[u].values(), key=lambda v: (cnt[v], -v))
        keep.append(u)
        kept.add(u)
    for v in sorted(range(1, len(trie)), key=lambda v: (-cnt[v], depth[v], v)):
        if len(keep) >= max_nodes:
            break
        if v not in kept and (par[v] == 0 or par[v] in kept):
            keep.append(v)
            kept.add(v)
    keep.sort(key=lambda v: (depth[v], -cnt[v], v))   # parents before children
    d = trie.draft(keep, [c / rows for c in cnt])
    return d.tokens, d.parents, d.probs

class Datastore:
    """A built datastore, memory-mapped."""

    def __init__(self, path: str | os.PathLike):
        p = Path(path)
        meta_file = p / "meta.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{p} is not a specpack datastore (no meta.json); build one "
                                    "with: specpack datastore build")
        self.meta = json.loads(meta_file.read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"datastore {p}: format_version {self.meta.get('format_version')} "
                             f"is not supported (expected {FORMAT_VERSION}); rebuild it")
        self.path = p
        if self.meta["num_tokens"]:
            self.tokens = np.load(p / "tokens.npy", mmap_mode="r")
            self.index = np.load(p / "index.npy", mmap_mode="r")
        else:  # np.load cannot memory-map empty arrays
            self.tokens = np.zeros(0, np.int32)
            self.index = np.zeros(0, np.int32)
        self.sort_depth = int(self.meta["sort_depth"])

    def __len__(self) -> int:
        return int(self.tokens.size)

    @property
    def nbytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def lookup(self, context: np.ndarray, *, max_match: int = 16, min_match: int = 2,
               max_matches: int = 64, continuation_length: int = 10):
        """(match length, continuation rows [k, continuation_length], -1 padded)."""
        ctx = np.ascontiguousarray(context, np.int32)
        out = np.empty((max(max_matches, 1), continuation_length), np.int32)
        if len(self) == 0 or ctx.size == 0:
            return 0, out[:0]
        m, k = _lookup(self.tokens, self.index, ctx, min(max_match, self.sort_depth),
                       max(min_match, 1), max_matches, continuation_length, out)
        return int(m), out[:k]


# ---------------------------------------------------------------- corpus input
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".c", ".h", ".cc", ".cpp", ".hpp", ".js", ".ts",
                 ".java", ".go", ".rs", ".json", ".yaml", ".yml", ".toml", ".html", ".css",
                 ".sh", ".sql", ".tex")


def corpus_files(inputs: Iterable[str]) -> list[Path]:
    """Files named by ``inputs`` (files, or directories walked for text files), sorted."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and
                          (f.suffix in TEXT_SUFFIXES or f.suffix == ".jsonl"))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"--input {item}: no such file or directory")
    return out


def iter_texts(files: Iterable[Path]):
    """Documents: one per text file; one per line of a ``.jsonl`` file (a JSON
    string, or an object's ``text`` / ``prompt`` / ``content`` field)."""
    for f in files:
        if f.suffix == ".jsonl":
            with open(f, encoding="utf-8", errors="replace") as fh:
                for n, line in enumerate(fh, 1):
                    line = line.strip()
                    if not line:
                        continue
                    obj = json.loads(line)
                    if isinstance(obj, str):
                        yield obj
                        continue
                    for k in ("text", "prompt", "content"):
                        if isinstance(obj, dict) and isinstance(obj.get(k), str):
                            yield obj[k]
                            break
                    else:
                        raise ValueError(f"{f}:{n}: expected a JSON string or an object with "
                                         "'text', 'prompt' or 'content'")
        else:
            yield f.read_text(encoding="utf-8", errors="replace")


def tokenize_corpus(texts: Iterable[str], tokenizer, batch: int = 256):
    """Token-id documents (np.int32) from texts, in batches."""
    buf: list[str] = []

    def flush():
        enc = tokenizer(buf, add_special_tokens=False)["input_ids"]
        for ids in enc:
            yield np.asarray(ids, np.int32)
        buf.clear()

    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            yield from flush()
    if buf:
        yield from flush()
