"""Retrieval proposers beyond SuffixDecoding: corpus datastore (REST), the
hierarchical cascade, and model + retrieval fusion (RASD).

* :class:`DatastoreProposer` - REST (He et al., 2024, arXiv:2311.08252) over
  a memory-mapped corpus index (:mod:`specpack.proposers.datastore`).
* :class:`CascadeProposer` - asks sources in order of locality: this
  request's suffix trie, the global trie of recent outputs, the corpus
  datastore, Token Recycling. ``first``: the first draft whose score
  (expected accepted tokens = sum of node probabilities) reaches
  ``min_score`` wins, else the best-scoring one; ``merge``: every source's
  tree is merged by prefix (:func:`merge_trees`) under the budget.
* :class:`FusionProposer` - RASD (Quan et al., 2025, arXiv:2503.03434): a
  draft-model tree plus a retrieval tree; retrieval branches whose first
  token has draft probability ``q(t | context) < prune_threshold`` are
  dropped, the rest merged with the model tree by longest prefix (a merged
  node keeps ``max`` of the two path probabilities), best nodes kept.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from specpack.config import (CascadeConfig, DatastoreConfig, FusionConfig, nested_method_config)
from specpack.draft import Draft
from specpack.protocols import Budget, Feedback, RequestView
from specpack.proposers.datastore import Datastore, continuation_tree
from specpack.proposers.tree_merge import merge_trees


def draft_score(d: Draft) -> float:
    """Expected accepted tokens of a tree under independent acceptance."""
    if len(d) == 0:
        return 0.0
    if d.probs is None:
        return float(len(d.best_path()))
    return float(d.probs[d.best_path()].sum())


class DatastoreProposer:
    """REST drafts from a corpus datastore; implements ``Proposer``."""

    method = "datastore"

    def __init__(self, config: DatastoreConfig, *, max_nodes: int = 64,
                 datastore: Datastore | None = None):
        self.config = config
        self.max_nodes = min(max_nodes, config.max_tree_nodes)
        self.store = datastore or Datastore(config.datastore_path)
        self.last_match = 0
        # compile (or load from numba's cache) the lookup kernels now, at start-up
        self.propose_one(RequestView(None, np.array([0, 0], np.int32), Budget(1, 1)))

    def release(self, key: Hashable, finished: bool = True) -> None:
        """Stateless per request."""

    def observe(self, feedback: Sequence[Feedback]) -> None:
        """Acceptance does not change the corpus."""

    def propose(self, batch: Sequence[RequestView]) -> list[Draft]:
        return [self.propose_one(v) for v in batch]

    def propose_one(self, view: RequestView) -> Draft:
        c = self.config
        n = min(view.budget.max_nodes, self.max_nodes)
        if n <= 0 or view.budget.max_depth <= 0:
            return Draft.empty()
        m, conts = self.store.lookup(view.context, max_match=c.max_match, min_match=c.min_match,
                                     max_matches=c.max_matches,
                                     continuation_length=min(c.continuation_length,
                                                             view.budget.max_depth))
        self.last_match = m
        if m == 0:
            return Draft.empty()
        toks, pars, probs = continuation_tree(conts, n)
        return Draft.trusted(toks, pars, probs)


class CascadeProposer:
    """Hierarchical retrieval cascade; implements ``Proposer``."""

    method = "cascade"

    def __init__(self, config: CascadeConfig, *, max_nodes: int = 16):
        from specpack.proposers.suffix import SuffixProposer
        from specpack.proposers.token_recycling import TokenRecyclingProposer

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

    def observe(self, feedback: Sequence[Feedback]) -> None:
        pass

    def observe_target_topk(self, tokens, topk) -> None:
        if self.recycling is not None:
            self.recycling.observe_target_topk(tokens, topk)

    def propose(self, batch: Sequence[RequestView]) -> list[Draft]:
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


class FusionProposer:
    """RASD: draft-model tree + pruned retrieval tree; implements ``Proposer``."""

    method = "rasd"

    def __init__(self, config: FusionConfig, *, max_nodes: int = 16, draft=None, retrieval=None):
        from specpack.proposers.draft_model import DraftModelProposer
        from specpack.registry import FACTORIES

        self.config = config
        self.max_nodes = max_nodes
        if draft is None:
            draft = DraftModelProposer.from_config(config, max_nodes=max_nodes)
        self.draft = draft
        if retrieval is None:
            rc = nested_method_config(config, "retrieval", "rasd")
            retrieval = FACTORIES[rc.method](rc, max_nodes)
        self.retrieval = retrieval
        self.pruned = 0
        self.kept = 0

    def release(self, key: Hashable, finished: bool = True) -> None:
        self.draft.release(key, finished)
        self.retrieval.release(key, finished)

    def observe(self, feedback: Sequence[Feedback]) -> None:
        self.retrieval.observe(feedback)

    def observe_target_topk(self, tokens, topk) -> None:
        if hasattr(self.retrieval, "observe_target_topk"):
            self.retrieval.observe_target_topk(tokens, topk)

    def propose(self, batch: Sequence[RequestView], stop_rule=None) -> list[Draft]:
        if not batch:
            return []
        model_trees = self.draft.propose(batch, stop_rule=stop_rule)
        retrieved = self.retrieval.propose(batch)
        out = []
        for v, md, rd in zip(batch, model_trees, retrieved):
            n = min(v.budget.max_nodes, self.max_nodes)
            q = self.draft.root_q.get(v.key)
            out.append(self.fuse(md, rd, q, n).truncated(n, v.budget.max_depth))
        return out

    def fuse(self, model_tree: Draft, retrieval_tree: Draft, root_q, max_nodes: int) -> Draft:
        """Prune retrieval branches by the drafter's first-token probability, then merge."""
        rd = retrieval_tree
        if len(rd) and root_q is not None:
            q = np.asarray(root_q.detach().float().numpy() if hasattr(root_q, "detach")
                           else root_q, np.float64)
            first = rd.parents < 0
            ok_first = np.zeros(len(rd), bool)
            firsts = np.flatnonzero(first)
            toks = rd.tokens[firsts]
            valid = (toks >= 0) & (toks < q.size)
            good = np.zeros(firsts.size, bool)
            good[valid] = q[toks[valid]] >= self.config.prune_threshold
            ok_first[firsts[good]] = True
            self.pruned += int((~good).sum())
            self.kept += int(good.sum())
            # a pruned first token drops its whole branch
            rd = rd.subset(ok_first | ~first)
        # model tree first: it wins ties
        md = Draft(model_tree.tokens, model_tree.parents, model_tree.probs)  # drop dists
        return merge_trees([md, rd], max_nodes)
