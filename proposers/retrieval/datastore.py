"""REST corpus datastore proposer (He et al., 2024, arXiv:2311.08252).

Drafts from a memory-mapped corpus index (:mod:`.corpus_index`): the
longest context suffix (``max_match`` down to ``min_match`` tokens) found in
the corpus selects up to ``max_matches`` occurrences; the
``continuation_length`` tokens after each are merged into a prefix trie and
the most frequent prefixes form the tree, node probability =
``count(prefix) / occurrences``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from specpack.config import DatastoreConfig
from specpack.draft import Draft
from specpack.protocols import NO_STOP, Budget, Proposer, RequestView, StopRule
from specpack.proposers.retrieval.corpus_index import Datastore, continuation_tree


class DatastoreProposer(Proposer):
    """REST drafts from a corpus datastore (stateless per request: the
    index is shared and read-only)."""

    method = "datastore"

    def __init__(self, config: DatastoreConfig, *, max_nodes: int = 64,
                 datastore: Datastore | None = None):
        self.config = config
        self.max_nodes = min(max_nodes, config.max_tree_nodes)
        self.store = datastore or Datastore(config.datastore_path)
        self.last_match = 0
        # compile (or load from numba's cache) the lookup kernels now, at start-up
        self.propose_one(RequestView(None, np.array([0, 0], np.int32), Budget(1, 1)))

    def propose(self, batch: Sequence[RequestView], stop_rule: StopRule = NO_STOP) -> list[Draft]:
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


