"""Draft-model proposer: a small ``transformers`` causal LM drafts chains or trees.

Per request the drafter keeps its own KV cache (:class:`CachedLM`) over the
committed tokens; each step it catches up on the tokens committed since the
last step (one causal forward), then drafts level by level, one batched
forward per level over all requests, each new node attending to the
committed prefix and its draft ancestors (tree mask). The speculative keys
and values are dropped afterwards.

* greedy requests (``temperature == 0``): chain = argmax at each level;
  tree = the ``tree_width`` most likely children of each expanded node;
  ``probs`` hold the path probability ``prod q`` (with ``q`` the draft's
  softmax), and the tree keeps the ``max_expand`` best nodes per level for
  expansion under the node budget.
* sampling requests: ``q`` = the draft's distribution after the request's
  temperature/top-p; each expanded node gets 1 (chain) or ``tree_width``
  children drawn i.i.d. from ``q``; ``Draft.dists`` carries every ``q`` so
  verification can apply the exact ``min(1, p/q)`` rule.

Every draft also carries ``root_dist`` (the drafter's ``q`` after the
committed context, a view, no copy) for methods that fuse drafters (RASD).
Per-request caches are capped by ``max_active_requests`` (least recently
drafted request evicted; it is re-prefilled if it comes back).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Sequence

import numpy as np
import torch

from specpack.config import DraftModelConfig
from specpack.draft import Draft
from specpack.kernels.sampling import process_logits
from specpack.hf.kv_cache import CachedLM
from specpack.protocols import NO_STOP, Proposer, RequestView, StopRule


class _Tree:
    """Nodes drafted for one request at one step."""

    def __init__(self, vocab: int, stochastic: bool):
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.probs: list[float] = []
        self.depths: list[int] = []
        self.stochastic = stochastic
        self.rows: dict[int, torch.Tensor] = {}  # node (-1 root) -> q row
        self.vocab = vocab

    def add(self, token: int, parent: int, prob: float, depth: int) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.probs.append(prob)
        self.depths.append(depth)
        return len(self.tokens) - 1

    def ancestors(self, node: int) -> list[int]:
        out = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out

    def to_draft(self) -> Draft:
        n = len(self.tokens)
        dists = None
        if self.stochastic:
            dists = np.zeros((n + 1, self.vocab), np.float32)
            for node, row in self.rows.items():
                dists[node + 1] = row.numpy()
        return Draft(np.asarray(self.tokens, np.int32), np.asarray(self.parents, np.int32),
                     np.asarray(self.probs, np.float32), dists,
                     root_dist=self.rows[-1].numpy())


class DraftModelProposer(Proposer):
    """Drafts with a small causal LM (see the module docstring)."""

    def __init__(self, model, config: DraftModelConfig | None = None, *, max_nodes: int = 8):
        self.config = config or DraftModelConfig(draft_model="<in-memory>")
        self.lm = CachedLM(model)
        self.max_nodes = max_nodes
        self.vocab = int(model.config.vocab_size)
        self.gen = torch.Generator().manual_seed(self.config.seed)
        self._root_logits: dict[Hashable, torch.Tensor] = {}
        self._recent: OrderedDict[Hashable, None] = OrderedDict()  # LRU of cached requests

    @classmethod
    def from_config(cls, config: DraftModelConfig, *, max_nodes: int = 8,
                    draft_lm=None) -> "DraftModelProposer":
        """Load ``config.draft_model`` (or use the loaded ``draft_lm``)."""
        if draft_lm is None:
            from transformers import AutoModelForCausalLM

            draft_lm = AutoModelForCausalLM.from_pretrained(config.draft_model,
                                                            dtype=torch.float32)
        return cls(draft_lm, config, max_nodes=max_nodes)

    # ------------------------------------------------------------ state
    def release(self, key: Hashable, finished: bool = True) -> None:
        self.lm.release(key)
        self._root_logits.pop(key, None)
        self._recent.pop(key, None)

    def num_tracked(self) -> int:
        return len(self._recent)

    def _touch(self, batch: Sequence[RequestView]) -> None:
        """Mark ``batch`` most recently used; evict beyond ``max_active_requests``."""
        for v in batch:
            self._recent[v.key] = None
            self._recent.move_to_end(v.key)
        while len(self._recent) > self.config.max_active_requests:
            self.release(next(iter(self._recent)))

    def _sync(self, batch: Sequence[RequestView]) -> list[torch.Tensor]:
        """Bring each draft cache to the committed context; return root logits."""
        keys, chunks = [], []
        for v in batch:
            ctx = v.context.tolist()
            cached = self.lm.cached_tokens(v.key)
            n = len(cached)
            if cached != ctx[:n]:
                n = 0
                for a, b in zip(cached, ctx):
                    if a != b:
                        break
                    n += 1
                self.lm.truncate(v.key, n)
                self._root_logits.pop(v.key, None)
            if n == len(ctx) and v.key not in self._root_logits:
                n -= 1
                self.lm.truncate(v.key, n)
            keys.append(v.key)
            chunks.append(ctx[n:])
        logits = self.lm.extend(keys, chunks)
        it = iter(logits)
        for k, c in zip(keys, chunks):
            if c:
                self._root_logits[k] = next(it)[-1]
        return [self._root_logits[k] for k in keys]

    def _q(self, logits: torch.Tensor, view: RequestView) -> torch.Tensor:
        if view.temperature > 0:
            return process_logits(logits, view.temperature, view.top_p)
        return torch.softmax(logits.float(), dim=-1)

    # ------------------------------------------------------------ drafting
    def propose(self, batch: Sequence[RequestView], stop_rule: StopRule = NO_STOP) -> list[Draft]:
        """Draft for ``batch``; ``stop_rule`` (:mod:`specpack.proposers.policy.stopping`)
        stops a branch before the token it would draw from a distribution the
        rule rejects (adaptive length), and drops nodes it does not admit."""
        if not batch:
            return []
        root_logits = self._sync(batch)
        cfg = self.config
        self._order: list[dict[int, int]] = [{} for _ in batch]  # node -> slot after base
        width = 1 if cfg.mode == "chain" else cfg.tree_width
        trees = [_Tree(self.vocab, v.temperature > 0) for v in batch]
        frontier: list[list[int]] = [[-1] for _ in batch]
        q_rows: list[dict[int, torch.Tensor]] = [{-1: self._q(lg, v)} for lg, v in zip(root_logits, batch)]
        budgets = [min(v.budget.max_nodes, self.max_nodes) for v in batch]
        max_depth = max(v.budget.max_depth for v in batch)
        base = [self.lm.length(v.key) for v in batch]  # == len(context)
        for depth in range(1, max_depth + 1):
            new_level: list[list[int]] = []
            for b, v in enumerate(batch):
                tree = trees[b]
                tree.rows.update(q_rows[b])
                room = budgets[b] - len(tree.tokens)
                if depth > v.budget.max_depth or room <= 0 or not frontier[b]:
                    new_level.append([])
                    continue
                cands = []  # (prob, token, parent)
                for u in frontier[b]:
                    q = q_rows[b][u]
                    pu = 1.0 if u < 0 else tree.probs[u]
                    if stop_rule.stop_before(depth, q, pu):
                        continue
                    if tree.stochastic:
                        picks = torch.multinomial(q, width, replacement=True, generator=self.gen)
                    else:
                        picks = torch.topk(q, min(width, q.numel())).indices
                    for t in picks.tolist():
                        p = pu * float(q[t])
                        if stop_rule.admits(p) or tree.stochastic:
                            cands.append((p, t, u))
                if not tree.stochastic:
                    cands.sort(key=lambda c: -c[0])
                    cands = cands[:room]
                else:
                    # i.i.d. children of a node must be kept or dropped together
                    kept, used = [], 0
                    for u in frontier[b]:
                        group = [c for c in cands if c[2] == u]
                        if used + len(group) > room:
                            break
                        kept += group
                        used += len(group)
                    cands = kept
                level = [tree.add(t, u, p, depth) for p, t, u in cands]
                # expand the most likely nodes of this level next
                order = sorted(level, key=lambda i: -tree.probs[i])
                new_level.append(order[: cfg.max_expand] if cfg.mode == "tree" else order[:1])
            frontier = new_level
            if depth == max_depth or not any(frontier):
                break
            # forward this level's expandable nodes to get their q rows
            fkeys, ftoks, fpos, fmask, fvis, idx = [], [], [], [], [], []
            for b, v in enumerate(batch):
                nodes = frontier[b]
                if not nodes:
                    continue
                tree = trees[b]
                cached = self.lm.length(v.key)  # base + nodes forwarded before
                ext = cached - base[b]
                vis = np.zeros((len(nodes), cached), dtype=bool)
                vis[:, : base[b]] = True
                order = self._order[b]
                for r, node in enumerate(nodes):
                    for a in tree.ancestors(tree.parents[node]):
                        vis[r, base[b] + order[a]] = True
                fkeys.append(v.key)
                ftoks.append([tree.tokens[i] for i in nodes])
                fpos.append([base[b] - 1 + depth] * len(nodes))
                fmask.append(np.eye(len(nodes), dtype=bool))
                fvis.append(vis)
                idx.append(b)
                assert ext == len(order)
            logits = self.lm.forward(fkeys, ftoks, fpos, fmask, fvis)
            for b, lg in zip(idx, logits):
                v = batch[b]
                self.lm.commit(v.key)  # temporary: dropped after drafting
                order = self._order[b]
                q_rows[b] = {}
                for r, node in enumerate(frontier[b]):
                    order[node] = len(order)
                    q_rows[b][node] = self._q(lg[r], v)
        for b, v in enumerate(batch):
            trees[b].rows.update(q_rows[b])
            self.lm.truncate(v.key, base[b])
        drafts = [t.to_draft() for t in trees]
        self._touch(batch)
        return drafts
