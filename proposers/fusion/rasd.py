"""RASD fusion (Quan et al., 2025, arXiv:2503.03434): model tree + retrieval tree.

A draft-model tree plus a retrieval tree; retrieval branches whose first
token has draft probability ``q(t | context) < prune_threshold`` are dropped
(``q`` = the draft model's root distribution, carried in its draft as
``Draft.root_dist``), the rest merged with the model tree by longest prefix
(a merged node keeps ``max`` of the two path probabilities), best nodes
kept.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from specpack.config import FusionConfig, nested_method_config
from specpack.draft import Draft
from specpack.protocols import NO_STOP, Feedback, Proposer, RequestView, StopRule
from specpack.token_trie import merge_trees


class FusionProposer(Proposer):
    """RASD: draft-model tree + pruned retrieval tree."""

    method = "rasd"

    def __init__(self, config: FusionConfig, *, max_nodes: int = 16, draft=None, retrieval=None):
        from specpack.methods import build_method
        from specpack.proposers.model.draft_model import DraftModelProposer

        self.config = config
        self.max_nodes = max_nodes
        if draft is None:
            draft = DraftModelProposer.from_config(config, max_nodes=max_nodes)
        self.draft = draft
        if retrieval is None:
            rc = nested_method_config(config, "retrieval", "rasd")
            retrieval = build_method(rc, max_nodes)
        self.retrieval = retrieval
        self.pruned = 0
        self.kept = 0

    @classmethod
    def from_config(cls, config: FusionConfig, *, max_nodes: int, draft_lm=None):
        """Load the draft model of ``config`` (or use the loaded ``draft_lm``)."""
        from specpack.proposers.model.draft_model import DraftModelProposer

        draft = DraftModelProposer.from_config(config, max_nodes=max_nodes, draft_lm=draft_lm)
        return cls(config, max_nodes=max_nodes, draft=draft)

    def release(self, key: Hashable, finished: bool = True) -> None:
        self.draft.release(key, finished)
        self.retrieval.release(key, finished)

    def observe(self, feedback: Sequence[Feedback]) -> None:
        self.retrieval.observe(feedback)

    @property
    def wants_target_topk(self) -> bool:
        return self.retrieval.wants_target_topk

    def observe_target_topk(self, tokens, topk) -> None:
        self.retrieval.observe_target_topk(tokens, topk)

    def num_tracked(self) -> int:
        return max(self.draft.num_tracked(), self.retrieval.num_tracked())

    def propose(self, batch: Sequence[RequestView], stop_rule: StopRule = NO_STOP) -> list[Draft]:
        if not batch:
            return []
        model_trees = self.draft.propose(batch, stop_rule=stop_rule)
        retrieved = self.retrieval.propose(batch)
        out = []
        for v, md, rd in zip(batch, model_trees, retrieved):
            n = min(v.budget.max_nodes, self.max_nodes)
            out.append(self.fuse(md, rd, md.root_dist, n).truncated(n, v.budget.max_depth))
        return out

    def fuse(self, model_tree: Draft, retrieval_tree: Draft, root_q, max_nodes: int) -> Draft:
        """Prune retrieval branches by the drafter's first-token probability, then merge."""
        rd = retrieval_tree
        if len(rd) and root_q is not None:
            q = np.asarray(root_q, np.float64)
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
