"""Depth-limited suffix trie with occurrence counts, in flat arrays + numba.

This is the data structure behind SuffixDecoding (Oliaro et al., 2024,
arXiv:2411.04975). For a token sequence ``x_1..x_L`` the trie holds every
substring of length ``<= D`` (``D`` = ``max_depth``), each node storing
``count`` = number of positions where that substring ends. Appending one token
``t`` extends each of the (at most ``D``) *active* nodes - the nodes of the
current suffixes of length ``0..D-1`` - by a child ``t``, so an update costs
``O(new_tokens x D)``.

Continuation probability of child ``c`` of node ``u`` is
``count(c) / sum_{c' child of u} count(c')``; the denominator excludes the
current (not yet continued) occurrence of ``u``. A draft grows best-first by
path probability (product of ratios along the path) and stops below
``min_prob`` or at the node budget (:func:`speculate`).

Storage (no Python objects per node): ``tok``, ``cnt``, ``first_child``,
``next_sibling`` (int32 each) plus an open-addressing hash table from
``(node << 32) | token`` to child id (int64 key + int32 value, load <= 1/2):
about 40 bytes per node. Decrementing counts (``delta=-1``) removes a
sequence; nodes whose count reaches zero become dead, are skipped by lookups
that draft, and are reclaimed when the owner rebuilds the trie.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(11400714819323198485)
_EMPTY = np.int64(-1)


@njit(cache=True, inline="always")
def _slot(key, bits):
    return np.int64((np.uint64(key) * _GOLDEN) >> np.uint64(64 - bits))


@njit(cache=True)
def _find(hkey, hval, bits, node, token):
    key = (np.int64(node) << 32) | (np.int64(token) & 0xFFFFFFFF)
    mask = (np.int64(1) << bits) - 1
    i = _slot(key, bits)
    while True:
        k = hkey[i]
        if k == key:
            return hval[i]
        if k == -1:
            return -1
        i = (i + 1) & mask


@njit(cache=True)
def _hash_put(hkey, hval, bits, key, val):
    mask = (np.int64(1) << bits) - 1
    i = _slot(key, bits)
    while hkey[i] != -1:
        i = (i + 1) & mask
    hkey[i] = key
    hval[i] = val


@njit(cache=True)
def _rehash(old_key, old_val, new_key, new_val, bits):
    for i in range(old_key.size):
        if old_key[i] != -1:
            _hash_put(new_key, new_val, bits, old_key[i], old_val[i])


@njit(cache=True)
def _extend(tok, cnt, fc, ns, hkey, hval, bits, meta, active, tokens, max_depth, delta):
    """Append ``tokens`` to the sequence whose current suffix nodes are
    ``active[0:meta[2]]`` (``active[d]`` = node of the suffix of length ``d``).

    ``meta`` = [n_nodes, n_dead, n_active]. Counts change by ``delta`` (+1 add,
    -1 remove). Capacity for ``len(tokens) * max_depth`` new nodes must exist.
    Returns nothing; ``meta`` and ``active`` are updated in place.
    """
    n_nodes = meta[0]
    n_dead = meta[1]
    n_active = meta[2]
    for j in range(tokens.size):
        t = tokens[j]
        cnt[0] += delta
        # walk active suffixes from longest to shortest so active[d+1] = child(active[d])
        new_n = min(n_active + 1, max_depth + 1)
        for d in range(new_n - 2, -1, -1):
            u = active[d]
            c = _find(hkey, hval, bits, u, t)
            if c == -1:
                c = n_nodes
                n_nodes += 1
                tok[c] = t
                cnt[c] = 0
                fc[c] = -1
                ns[c] = fc[u]
                fc[u] = c
                _hash_put(hkey, hval, bits, (np.int64(u) << 32) | (np.int64(t) & 0xFFFFFFFF), c)
                if delta < 0:
                    n_dead += 1  # cannot happen for consistent removals
            before = cnt[c]
            cnt[c] = before + delta
            if before == 0 and delta > 0 and c < meta[0]:
                n_dead -= 1
            elif before > 0 and cnt[c] == 0:
                n_dead += 1
            active[d + 1] = c
        active[0] = 0
        n_active = new_n
    meta[0] = n_nodes
    meta[1] = n_dead
    meta[2] = n_active


@njit(cache=True)
def _match_nodes(hkey, hval, bits, cnt, pattern, max_len, out):
    """``out[d]`` = node of ``pattern[-d:]`` (live) or -1, for d in 1..max_len."""
    n = pattern.size
    for d in range(1, max_len + 1):
        out[d] = -1
    for d in range(1, min(max_len, n) + 1):
        u = 0
        ok = True
        for i in range(n - d, n):
            u = _find(hkey, hval, bits, u, pattern[i])
            if u == -1 or cnt[u] <= 0:
                ok = False
                break
        if not ok:
            break  # a longer suffix cannot match if this one does not
        out[d] = u


@njit(cache=True)
def _push_children(cnt, fc, ns, u, p_u, slot, depth, min_prob,
                   cand_node, cand_par, cand_prob, cand_depth, n_cand):
    """Add the live children ``c`` of node ``u`` with path probability
    ``p_u * cnt[c] / sum(cnt[children])`` >= ``min_prob`` to the candidate
    pool (draft parent ``slot``, depth ``depth``); return the new pool size."""
    total = 0
    c = fc[u]
    while c != -1:
        if cnt[c] > 0:
            total += cnt[c]
        c = ns[c]
    if total == 0:
        return n_cand
    cap = cand_node.size
    c = fc[u]
    while c != -1:
        if cnt[c] > 0:
            q = p_u * cnt[c] / total
            if q >= min_prob:
                i = n_cand
                if n_cand == cap:  # pool full: replace its worst entry if q beats it
                    i = 0
                    for j in range(1, cap):
                        if cand_prob[j] < cand_prob[i]:
                            i = j
                    if cand_prob[i] >= q:
                        i = -1
                else:
                    n_cand += 1
                if i >= 0:
                    cand_node[i] = c
                    cand_par[i] = slot
                    cand_prob[i] = q
                    cand_depth[i] = depth
        c = ns[c]
    return n_cand


@njit(cache=True)
def _speculate(tok, cnt, fc, ns, start, max_cont_depth, max_nodes, min_prob,
               out_tok, out_par, out_prob, cand_node, cand_par, cand_prob, cand_depth):
    """Best-first draft tree below node ``start``; returns (n_nodes, score).

    Children of a draft node enter the candidate pool with probability
    ``p(parent) * cnt(child) / sum(cnt(children))``; the pool's best candidate
    is emitted while it is >= ``min_prob``. ``score`` = sum of emitted
    probabilities, the expected number of accepted tokens.
    """
    if max_nodes <= 0 or max_cont_depth <= 0:
        return 0, 0.0
    n_cand = _push_children(cnt, fc, ns, start, 1.0, -1, 1, min_prob,
                            cand_node, cand_par, cand_prob, cand_depth, 0)
    n_out = 0
    score = 0.0
    while n_out < max_nodes and n_cand > 0:
        best = 0
        for i in range(1, n_cand):
            if cand_prob[i] > cand_prob[best]:
                best = i
        u = cand_node[best]
        p = cand_prob[best]
        par = cand_par[best]
        depth = cand_depth[best]
        n_cand -= 1
        cand_node[best] = cand_node[n_cand]
        cand_par[best] = cand_par[n_cand]
        cand_prob[best] = cand_prob[n_cand]
        cand_depth[best] = cand_depth[n_cand]
        out_tok[n_out] = tok[u]
        out_par[n_out] = par
        out_prob[n_out] = p
        n_out += 1
        score += p
        if depth < max_cont_depth:
            n_cand = _push_children(cnt, fc, ns, u, p, n_out - 1, depth + 1, min_prob,
                                    cand_node, cand_par, cand_prob, cand_depth, n_cand)
    return n_out, score


class SuffixTrie:
    """A depth-limited counted suffix trie over one or more sequences.

    ``extend(tokens)`` continues the *current* sequence; ``start_sequence()``
    begins a new one (resets the active suffixes, keeps all nodes).
    ``remove(tokens)`` subtracts a whole sequence added earlier.
    """

    __slots__ = ("max_depth", "tok", "cnt", "fc", "ns", "hkey", "hval", "bits",
                 "meta", "active")

    def __init__(self, max_depth: int, capacity: int = 256):
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        self.max_depth = int(max_depth)
        capacity = max(16, int(capacity))
        self.tok = np.empty(capacity, np.int32)
        self.cnt = np.empty(capacity, np.int32)
        self.fc = np.empty(capacity, np.int32)
        self.ns = np.empty(capacity, np.int32)
        self.tok[0], self.cnt[0], self.fc[0], self.ns[0] = -1, 0, -1, -1
        self.bits = max(5, int(2 * capacity - 1).bit_length())
        self.hkey = np.full(1 << self.bits, -1, np.int64)
        self.hval = np.empty(1 << self.bits, np.int32)
        self.meta = np.array([1, 0, 1], np.int64)  # n_nodes, n_dead, n_active
        self.active = np.zeros(self.max_depth + 1, np.int32)

    # -------------------------------------------------------------- sizes
    @property
    def num_nodes(self) -> int:
        """Allocated nodes, root included (dead ones too)."""
        return int(self.meta[0])

    @property
    def num_dead(self) -> int:
        return int(self.meta[1])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.tok, self.cnt, self.fc, self.ns, self.hkey, self.hval))

    def _grow(self, need: int) -> None:
        """Make room for ``need`` nodes in total (arrays double, hash load <= 1/2)."""
        cap = self.tok.size
        if need > cap:
            new_cap = max(need, cap * 2)
            for name in ("tok", "cnt", "fc", "ns"):
                old = getattr(self, name)
                new = np.empty(new_cap, old.dtype)
                new[: self.num_nodes] = old[: self.num_nodes]
                setattr(self, name, new)
        if 2 * need > (1 << self.bits):
            bits = max(self.bits + 1, int(2 * need - 1).bit_length())
            hkey = np.full(1 << bits, -1, np.int64)
            hval = np.empty(1 << bits, np.int32)
            _rehash(self.hkey, self.hval, hkey, hval, bits)
            self.hkey, self.hval, self.bits = hkey, hval, bits

    # -------------------------------------------------------------- updates
    def start_sequence(self) -> None:
        self.active[0] = 0
        self.meta[2] = 1

    def extend(self, tokens: np.ndarray, delta: int = 1) -> None:
        """Continue the current sequence; ``O(len(tokens) x max_depth)``.

        Each token creates at most ``max_depth`` nodes, so tokens go to the
        numba kernel in chunks that fit the spare capacity; capacity doubles
        only when a chunk of one token would not fit, which keeps memory
        proportional to the nodes actually created.
        """
        tokens = np.ascontiguousarray(tokens, dtype=np.int32)
        D = self.max_depth
        i = 0
        while i < tokens.size:
            spare = min(self.tok.size, (1 << self.bits) // 2) - self.num_nodes
            if spare < D:
                self._grow(self.num_nodes + max(D, self.num_nodes))
                continue
            j = min(tokens.size, i + spare // D)
            _extend(self.tok, self.cnt, self.fc, self.ns, self.hkey, self.hval, self.bits,
                    self.meta, self.active, tokens[i:j], D, delta)
            i = j

    def add_sequence(self, tokens: np.ndarray) -> None:
        self.start_sequence()
        self.extend(tokens, 1)

    def remove_sequence(self, tokens: np.ndarray) -> None:
        self.start_sequence()
        self.extend(tokens, -1)
        self.start_sequence()

    # -------------------------------------------------------------- queries
    def count(self, pattern) -> int:
        """Occurrences of ``pattern`` (0 if absent or longer than max_depth)."""
        u = 0
        for t in np.asarray(pattern, dtype=np.int64).tolist():
            u = _find(self.hkey, self.hval, self.bits, u, t)
            if u < 0:
                return 0
        return int(self.cnt[u])

    def active_node(self, length: int) -> int:
        """Node of the current sequence's suffix of ``length`` tokens, or -1."""
        return int(self.active[length]) if length < self.meta[2] else -1

    def match(self, pattern: np.ndarray, out: np.ndarray) -> None:
        _match_nodes(self.hkey, self.hval, self.bits, self.cnt,
                     np.ascontiguousarray(pattern, dtype=np.int32), self.max_depth - 1, out)


@njit(cache=True)
def best_draft(tok, cnt, fc, ns, start_by_len, max_match, trie_depth, max_depth,
               max_nodes, spec_factor, min_prob, out_tok, out_par, out_prob,
               tmp_tok, tmp_par, tmp_prob, cand_node, cand_par, cand_prob, cand_depth):
    """Try every match length ``m`` (``start_by_len[m]`` = trie node of the
    context's last ``m`` tokens, -1 if absent) and keep the draft with the
    highest score (SuffixDecoding §4: pick the candidate tree with the largest
    expected acceptance). Per ``m`` the draft has at most
    ``min(max_nodes, floor(spec_factor * m))`` nodes and continuation depth at
    most ``min(max_depth, trie_depth - m)``. Returns (n_nodes, score, m)."""
    best_n = 0
    best_score = 0.0
    best_m = 0
    for m in range(max_match, 0, -1):
        u = start_by_len[m]
        if u < 0 or fc[u] == -1:
            continue
        f = spec_factor * m
        limit = max_nodes if f >= max_nodes else int(f)
        if limit <= best_score:
            break  # a draft of `limit` nodes scores <= limit; shorter m only lower it
        depth = min(max_depth, trie_depth - m)
        if limit <= 0 or depth <= 0:
            continue
        n, score = _speculate(tok, cnt, fc, ns, u, depth, limit, min_prob,
                              tmp_tok, tmp_par, tmp_prob,
                              cand_node, cand_par, cand_prob, cand_depth)
        if n > 0 and score > best_score:
            best_n, best_score, best_m = n, score, m
            out_tok[:n] = tmp_tok[:n]
            out_par[:n] = tmp_par[:n]
            out_prob[:n] = tmp_prob[:n]
    return best_n, best_score, best_m
