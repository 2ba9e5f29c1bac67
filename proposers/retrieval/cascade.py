"""Hierarchical retrieval cascade: sources in order of locality.

This request's suffix trie, the global trie of recent outputs, the corpus
datastore, Token Recycling. ``first``: the first draft whose score
(expected accepted tokens = sum of node probabilities along its best path)
reaches ``min_score`` wins, else the best-scoring count-based one;
``merge``: every source's tree is merged by prefix
(:func:`specpack.token_trie.merge_trees`) under the budget.
"""

from __future__ import annotations

from typing import Hashable, Sequence

from specpack.config import CascadeConfig, nested_method_config
from specpack.draft import Draft
from specpack.protocols import NO_STOP, Proposer, RequestView, StopRule
from specpack.proposers.retrieval.datastore import DatastoreProposer
from specpack.token_trie import merge_trees


def draft_score(d: Draft) -> float:
    """Expected accepted tokens of a tree under independent acceptance."""
    if len(d) == 0:
        return 0.0
    if d.probs is None:
        return float(len(d.best_path()))
    return float(d.probs[d.best_path()].sum())


class CascadeProposer(Proposer):
    """Hierarchical retrieval cascade over the sources of ``config``."""

    method = "cascade"

    def __init__(self, config: CascadeConfig, *, max_nodes: int = 16):
        from specpack.proposers.retrieval.suffix import SuffixProposer
        from specpack.proposers.retrieval.token_recycling import TokenRecyclingProposer

        self.config = config
        self.max_nodes = max_nodes
        self.sources = config.resolved_sources
        where = "cascade"
        self.suffix = None
        if "request" in self.sources or "global" in self.sources:
            self.suffix = SuffixProposer(nested_method_config(config, "suffix", where),
                                         max_nodes=max_nodes)
        self.datastore = None
        if "datastore" in self.sources:
            self.datastore = DatastoreProposer(nested_method_config(config, "datastore", where),
                                               max_nodes=max_nodes)
        self.recycling = None
        if "token_recycling" in self.sources:
            self.recycling = TokenRecyclingProposer(
                nested_method_config(config, "token_recycling", where), max_nodes=max_nodes)
        #: which source produced each request's last draft (for reports/tests)
        self.chosen: dict[str, int] = {s: 0 for s in self.sources + ["none", "merged"]}

    def release(self, key: Hashable, finished: bool = True) -> None:
        for p in (self.suffix, self.datastore, self.recycling):
            if p is not None:
                p.release(key, finished)

    def num_tracked(self) -> int:
        return max((p.num_tracked() for p in (self.suffix, self.datastore, self.recycling)
                    if p is not None), default=0)

    @property
    def wants_target_topk(self) -> bool:
        return self.recycling is not None

    def observe_target_topk(self, tokens, topk) -> None:
        if self.recycling is not None:
            self.recycling.observe_target_topk(tokens, topk)

    def propose(self, batch: Sequence[RequestView], stop_rule: StopRule = NO_STOP) -> list[Draft]:
        return [self.propose_one(v) for v in batch]

    def _source(self, name: str, view: RequestView, suffix_cache: dict) -> tuple[Draft, float]:
        if name in ("request", "global"):
            if not suffix_cache:
                suffix_cache.update(self.suffix.propose_sources(view))
            return suffix_cache[name]
        if name == "datastore":
            d = self.datastore.propose_one(view)
        else:
            d = self.recycling.propose([view])[0]
        return d, draft_score(d)

    def propose_one(self, view: RequestView) -> Draft:
        cfg = self.config
        n = min(view.budget.max_nodes, self.max_nodes)
        suffix_cache: dict = {}
        if self.recycling is not None:
            # the table learns from every request, also when an earlier source answers
            self.recycling.observe_context(view)
        found = []
        for name in self.sources:
            d, score = self._source(name, view, suffix_cache)
            if cfg.mode == "first" and len(d) and score >= cfg.min_score:
                self.chosen[name] += 1
                return d.truncated(n, view.budget.max_depth)
            found.append((name, d, score))
        if cfg.mode == "merge":
            merged = merge_trees([d for _, d, _ in found], n)
            self.chosen["merged" if len(merged) else "none"] += 1
            return merged.truncated(n, view.budget.max_depth)
        # no source reached min_score: the best-scoring count-based source
        # (empirical probabilities); Token Recycling's node values are a rank
        # prior, not probabilities, so it only answers when the others are empty
        counted = [f for f in found if f[0] != "token_recycling" and len(f[1])]
        best = max(counted, key=lambda f: f[2]) if counted else max(found, key=lambda f: len(f[1]))
        if len(best[1]) == 0:
            self.chosen["none"] += 1
            return Draft.empty()
        self.chosen[best[0]] += 1
        return best[1].truncated(n, view.budget.max_depth)


