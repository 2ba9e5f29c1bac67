"""SuffixDecoding proposer (Oliaro et al., 2024, arXiv:2411.04975).

Two counted suffix tries (:mod:`specpack.proposers.retrieval.suffix_trie`):

* per request, over prompt + output, updated with the tokens committed since
  the previous step in ``O(new_tokens x D)``;
* global, over the outputs of recently finished requests, capped by number of
  cached requests and by cached tokens (oldest evicted first).

At each step, for every match length ``m`` (the last ``m`` context tokens
found in a trie), a draft tree is grown best-first from the matched node:
a child's probability is ``count(child) / sum(count(siblings))``, a node's
score the product along its path; branches below ``min_token_prob`` are
pruned; the tree has at most ``min(budget, floor(max_spec_factor x m))``
nodes. The tree with the largest score (sum of node probabilities = expected
accepted tokens) over both tries and all ``m`` wins. Chain-only engines take
:meth:`Draft.best_path`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Hashable, Sequence

import numpy as np

from specpack.config import SuffixConfig
from specpack.draft import Draft
from specpack.protocols import NO_STOP, Budget, Proposer, RequestView, StopRule
from specpack.proposers.retrieval.suffix_trie import SuffixTrie, best_draft

logger = logging.getLogger(__name__)


class _Scratch:
    """Reusable output/candidate buffers sized for a node budget."""

    def __init__(self, max_nodes: int):
        self.max_nodes = max_nodes
        n = max_nodes
        self.out = (np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.float32))
        self.tmp = (np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.float32))
        self.out_global = (np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.float32))
        c = 16 * n + 64
        self.cand = (np.empty(c, np.int32), np.empty(c, np.int32),
                     np.empty(c, np.float64), np.empty(c, np.int32))


class _RequestState:
    """One request's trie plus what is needed to check and extend it."""

    __slots__ = ("trie", "n_consumed", "first_token", "last_token", "prompt_len",
                 "output", "n_output", "checks")

    def __init__(self, max_depth: int, context: np.ndarray, prompt_len: int,
                 keep_output: bool):
        self.trie = SuffixTrie(max_depth, capacity=max(64, 2 * context.size))
        self.n_consumed = 0
        self.first_token = int(context[0]) if context.size else -1
        self.last_token = -1
        self.prompt_len = prompt_len if prompt_len >= 0 else int(context.size)
        self.output = np.empty(64 if keep_output else 0, np.int32)
        self.n_output = 0
        self.checks: tuple = ()  # (position, token) samples of the consumed tokens

    def matches(self, context: np.ndarray) -> bool:
        """O(1) check that ``context`` extends the tokens this state consumed:
        last and first token plus three interior samples (a quarter, half and
        three quarters in), so requests sharing a prefix and a suffix but
        differing in the middle are told apart."""
        n = self.n_consumed
        if n > context.size:
            return False
        if n == 0:
            return True
        if int(context[n - 1]) != self.last_token or int(context[0]) != self.first_token:
            return False
        return all(int(context[i]) == t for i, t in self.checks)

    def consume(self, context: np.ndarray) -> None:
        new = context[self.n_consumed:]
        if new.size == 0:
            return
        self.trie.extend(new)
        if self.output.size:
            start = max(self.prompt_len, self.n_consumed)
            out_new = context[start:]
            need = self.n_output + out_new.size
            if need > self.output.size:
                grown = np.empty(max(need, 2 * self.output.size), np.int32)
                grown[: self.n_output] = self.output[: self.n_output]
                self.output = grown
            self.output[self.n_output:need] = out_new
            self.n_output = need
        self.n_consumed = n = int(context.size)
        self.last_token = int(context[-1])
        self.checks = tuple((i, int(context[i])) for i in (n // 4, n // 2, 3 * n // 4))


class GlobalSuffixCache:
    """Trie over finished requests' outputs, FIFO-evicted at either cap."""

    def __init__(self, max_depth: int, max_requests: int, max_tokens: int):
        self.max_depth = max_depth
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.trie = SuffixTrie(max_depth)
        self.entries: deque[np.ndarray] = deque()
        self.num_tokens = 0

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, output: np.ndarray) -> None:
        if self.max_requests <= 0 or output.size == 0:
            return
        output = np.array(output[-self.max_tokens:], dtype=np.int32)
        self.entries.append(output)
        self.num_tokens += output.size
        self.trie.add_sequence(output)
        while len(self.entries) > self.max_requests or self.num_tokens > self.max_tokens:
            old = self.entries.popleft()
            self.num_tokens -= old.size
            self.trie.remove_sequence(old)
        # Reclaim dead nodes once they dominate: rebuild from live entries.
        if self.trie.num_dead > 4096 and 2 * self.trie.num_dead > self.trie.num_nodes:
            self._rebuild()

    def _rebuild(self) -> None:
        trie = SuffixTrie(self.max_depth, capacity=2 * self.num_tokens)
        for seq in self.entries:
            trie.add_sequence(seq)
        self.trie = trie


class SuffixProposer(Proposer):
    """Engine-agnostic SuffixDecoding proposer."""

    def __init__(self, config: SuffixConfig | None = None, *, max_nodes: int = 16):
        self.config = config or SuffixConfig()
        c = self.config
        self.max_depth = c.suffix_decoding_max_tree_depth
        self.max_nodes = c.suffix_decoding_max_tree_nodes or max_nodes
        self.states: OrderedDict[Hashable, _RequestState] = OrderedDict()
        self.global_cache = GlobalSuffixCache(
            self.max_depth, c.suffix_decoding_max_cached_requests,
            c.suffix_decoding_max_cached_tokens,
        )
        self._scratch = _Scratch(self.max_nodes)
        self._start_by_len = np.full(self.max_depth + 1, -1, np.int32)
        self._warm_up()

    def _warm_up(self) -> None:
        """Compile (or load from numba's cache) every kernel now, at engine
        start-up, instead of during the first request."""
        g = GlobalSuffixCache(self.max_depth, 1, 64)
        g.add(np.array([1, 2, 1, 2], np.int32))
        g.add(np.array([3, 4], np.int32))  # evicts: exercises removal
        saved, self.global_cache = self.global_cache, g
        try:
            self.propose_one(RequestView(None, np.array([1, 2, 1], np.int32), Budget(2, 2)))
        finally:
            self.states.pop(None, None)
            self.global_cache = saved

    # ------------------------------------------------------------ state
    def _state_for(self, view: RequestView) -> _RequestState:
        ctx = view.context
        st = self.states.get(view.key)
        if st is None or not st.matches(ctx):
            st = _RequestState(self.max_depth, ctx, view.num_prompt_tokens,
                               keep_output=self.global_cache.max_requests > 0)
            self.states[view.key] = st
            self.states.move_to_end(view.key)
            while len(self.states) > self.config.max_active_requests:
                self.states.popitem(last=False)
        else:
            self.states.move_to_end(view.key)
        st.consume(ctx)
        return st

    def release(self, key: Hashable, finished: bool = True) -> None:
        st = self.states.pop(key, None)
        if st is not None and finished and st.n_output:
            self.global_cache.add(st.output[: st.n_output])

    def num_tracked(self) -> int:
        return len(self.states)

    # ------------------------------------------------------------ drafting
    def propose(self, batch: Sequence[RequestView], stop_rule: StopRule = NO_STOP) -> list[Draft]:
        return [self.propose_one(v) for v in batch]

    def propose_one(self, view: RequestView) -> Draft:
        (ln, lscore), (gn, gscore) = self._draft_both(view)
        if gn > 0 and gscore > lscore:
            return self._as_draft(self._scratch.out_global, gn)
        return self._as_draft(self._scratch.out, ln)

    def propose_sources(self, view: RequestView) -> dict[str, tuple[Draft, float]]:
        """This request's trie and the global trie, each as (draft, score),
        score = expected accepted tokens (sum of node probabilities)."""
        (ln, lscore), (gn, gscore) = self._draft_both(view)
        return {"request": (self._as_draft(self._scratch.out, ln), float(lscore)),
                "global": (self._as_draft(self._scratch.out_global, gn), float(gscore))}

    @staticmethod
    def _as_draft(out, n: int) -> Draft:
        if n <= 0:
            return Draft.empty()
        return Draft.trusted(out[0][:n].copy(), out[1][:n].copy(), out[2][:n].copy())

    def _draft_both(self, view: RequestView):
        """((nodes, score) from this request's trie, (nodes, score) from the
        global trie), written to the scratch buffers ``out`` / ``out_global``."""
        st = self._state_for(view)
        max_nodes = min(view.budget.max_nodes, self.max_nodes)
        max_depth = view.budget.max_depth
        if max_nodes <= 0 or max_depth <= 0 or view.context.size == 0:
            return (0, 0.0), (0, 0.0)
        s = self._scratch
        D = self.max_depth
        trie = st.trie
        start = self._start_by_len
        n_active = int(trie.meta[2])
        max_match = min(D - 1, n_active - 1)
        start[: max_match + 1] = trie.active[: max_match + 1]
        n, score, _ = best_draft(trie.tok, trie.cnt, trie.fc, trie.ns, start, max_match, D,
                                 max_depth, max_nodes, self.config.suffix_decoding_max_spec_factor,
                                 self.config.suffix_decoding_min_token_prob,
                                 *s.out, *s.tmp, *s.cand)
        gn, gscore = 0, 0.0
        g = self.global_cache
        if len(g):
            gt = g.trie
            pattern = view.context[-(D - 1):] if D > 1 else view.context[:0]
            gt.match(pattern, start)
            gmax = min(D - 1, pattern.size)
            gn, gscore, _ = best_draft(gt.tok, gt.cnt, gt.fc, gt.ns, start, gmax, D,
                                       max_depth, max_nodes,
                                       self.config.suffix_decoding_max_spec_factor,
                                       self.config.suffix_decoding_min_token_prob,
                                       *s.out_global, *s.tmp, *s.cand)
        return (int(n), float(score)), (int(gn), float(gscore))
