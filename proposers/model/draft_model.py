"""Draft-model proposer: a small ``transformers`` causal LM drafts chains or trees.

Drafting = the drafting engine (:class:`~specpack.proposers.model.engine.DraftEngine`:
paged KV pool, one packed forward per tree level for the whole batch,
rollback) + a tree builder (:mod:`specpack.proposers.model.builders`:
which nodes to expand, how many children, when to stop). Each step:

1. catch-up: the engine's committed tokens are brought to each request's
   context (common prefix kept, the rest truncated; new tokens forwarded
   as causal chunks, batched); the last token's logits give the root ``q``;
2. levels ``d = 1, 2, ...``: the builder adds level ``d`` from the frontier's
   ``q`` rows; the new frontier nodes of all requests run as one forward
   (each node at position ``C - 1 + d``, attending to the committed prefix
   and its ancestors), giving their ``q``;
3. rollback: the drafted nodes' KV is dropped; the prefix stays cached.

* greedy requests (``temperature == 0``): chain = argmax at each level;
  tree = the ``tree_width`` most likely children of each expanded node;
  ``probs`` hold the path probability ``prod q``.
* sampling requests: ``q`` = the draft's distribution after the request's
  temperature/top-p; i.i.d. children; ``Draft.dists`` carries every ``q``
  so verification can apply the exact ``min(1, p/q)`` rule.

Every draft also carries ``root_dist`` (the drafter's ``q`` after the
committed context) for methods that fuse drafters (RASD). The drafter runs
on ``device`` / ``dtype`` (default: the target's device handed over by the
engine; float32 on CPU). Memory: the engine's pool (``kv_budget_tokens``,
LRU eviction of idle requests) and ``max_active_requests`` tracked requests.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Sequence

import torch

from specpack.config import DraftModelConfig
from specpack.draft import Draft
from specpack.kernels.sampling import process_logits
from specpack.proposers.model.builders import DraftTree, builder_for
from specpack.proposers.model.engine import DraftEngine, PoolExhausted
from specpack.protocols import NO_STOP, Proposer, RequestView, StopRule

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DraftModelProposer(Proposer):
    """Drafts with a small causal LM (see the module docstring)."""

    def __init__(self, model, config: DraftModelConfig | None = None, *, max_nodes: int = 8):
        self.config = config or DraftModelConfig(draft_model="<in-memory>")
        self.model = model
        self.max_nodes = max_nodes
        self.vocab = int(model.config.vocab_size)
        self.gen = torch.Generator().manual_seed(self.config.seed)
        self._target_param: torch.Tensor | None = None
        self._engine: DraftEngine | None = None
        self._root_logits: dict[Hashable, torch.Tensor] = {}
        self._recent: OrderedDict[Hashable, None] = OrderedDict()  # LRU of tracked requests

    @classmethod
    def from_config(cls, config: DraftModelConfig, *, max_nodes: int = 8,
                    draft_lm=None) -> "DraftModelProposer":
        """Load ``config.draft_model`` (or use the loaded ``draft_lm``)."""
        if draft_lm is None:
            from transformers import AutoModelForCausalLM

            draft_lm = AutoModelForCausalLM.from_pretrained(config.draft_model,
                                                            dtype=torch.float32)
        return cls(draft_lm, config, max_nodes=max_nodes)

    # ------------------------------------------------------------ engine
    def attach_target(self, model: Any) -> None:
        """Remember the target's device/dtype (the drafter runs there by default)."""
        try:
            self._target_param = next(model.parameters())
        except (AttributeError, StopIteration, TypeError):
            self._target_param = None

    def placement(self) -> tuple[torch.device, torch.dtype]:
        """``config.device`` / ``config.dtype``, ``auto`` = the target's device,
        and its dtype except on CPU (float32: CPU half-precision matmuls are
        slower than float32 on most CPUs and the drafter is small)."""
        cfg = self.config
        tgt = self._target_param
        if cfg.device != "auto":
            device = torch.device(cfg.device)
        elif tgt is not None:
            device = tgt.device
        else:
            device = next(self.model.parameters()).device
        if cfg.dtype != "auto":
            dtype = _DTYPES[cfg.dtype]
        elif tgt is not None and device.type != "cpu" and tgt.dtype in _DTYPES.values():
            dtype = tgt.dtype
        else:
            dtype = torch.float32
        return device, dtype

    @property
    def engine(self) -> DraftEngine:
        """Built on first use, after the engine host handed over the target."""
        if self._engine is None:
            device, dtype = self.placement()
            cfg = self.config
            self._engine = DraftEngine(self.model, max_tokens=cfg.kv_budget_tokens,
                                       page_size=cfg.page_size, device=device, dtype=dtype)
        return self._engine

    # ------------------------------------------------------------ state
    def release(self, key: Hashable, finished: bool = True) -> None:
        if self._engine is not None:
            self._engine.release(key)
        self._root_logits.pop(key, None)
        self._recent.pop(key, None)

    def num_tracked(self) -> int:
        return len(self._recent)

    def describe(self) -> dict:
        out = super().describe()
        if self._engine is not None:
            e = self._engine
            out.update(device=str(e.device), dtype=str(e.dtype).replace("torch.", ""),
                       kv_pages_in_use=e.pages_in_use(), kv_pages=e.pool.num_pages,
                       kv_evictions=e.evictions)
        return out

    def _touch(self, batch: Sequence[RequestView]) -> None:
        """Mark ``batch`` most recently used; evict beyond ``max_active_requests``."""
        for v in batch:
            self._recent[v.key] = None
            self._recent.move_to_end(v.key)
        while len(self._recent) > self.config.max_active_requests:
            self.release(next(iter(self._recent)))

    def _sync(self, batch: Sequence[RequestView]) -> list[torch.Tensor]:
        """Bring each request's committed KV to its context; return root logits."""
        eng = self.engine
        keys, chunks = [], []
        for v in batch:
            ctx = v.context.tolist()
            cached = eng.committed(v.key)
            n = len(cached)
            if n > len(ctx) or cached != ctx[:n]:
                n = 0
                for a, b in zip(cached, ctx):
                    if a != b:
                        break
                    n += 1
                eng.truncate(v.key, n)
                self._root_logits.pop(v.key, None)
            if n == len(ctx) and v.key not in self._root_logits:
                n -= 1                      # the root's logits are needed again
                eng.truncate(v.key, n)
            keys.append(v.key)
            chunks.append(ctx[n:])
        for k, lg in zip(keys, eng.extend(keys, chunks)):
            if lg is not None:
                self._root_logits[k] = lg
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
        drafts = self._propose_fitting(list(batch), stop_rule)
        self._touch(batch)
        return drafts

    def _propose_fitting(self, batch: list[RequestView], stop_rule: StopRule) -> list[Draft]:
        """Draft ``batch`` in one go if its KV fits the pool, else in halves
        (each half may evict the other's idle KV); a request whose context
        alone exceeds the pool gets no draft."""
        eng = self.engine
        keys = [v.key for v in batch]
        eng.pinned = set(keys)
        try:
            root_logits = self._sync(batch)
            return self._draft(batch, root_logits, stop_rule)
        except PoolExhausted:
            for k in keys:
                self._root_logits.pop(k, None)
            if len(batch) == 1:
                eng.release(keys[0])
                return [Draft.empty()]
        finally:
            eng.rollback([k for k in keys if eng.block_size(k)])
            eng.pinned = set()
        half = len(batch) // 2
        return (self._propose_fitting(batch[:half], stop_rule)
                + self._propose_fitting(batch[half:], stop_rule))

    def _draft(self, batch, root_logits, stop_rule) -> list[Draft]:
        cfg = self.config
        eng = self.engine
        trees = [DraftTree(self.vocab, v.temperature > 0) for v in batch]
        builders = [builder_for(cfg.mode, cfg.tree_width, cfg.max_expand, t.stochastic)
                    for t in trees]
        for t, lg, v in zip(trees, root_logits, batch):
            t.rows[-1] = self._q(lg, v)
        frontier: list[list[int]] = [[-1] for _ in batch]
        slot: list[dict[int, int]] = [{-1: -1} for _ in batch]   # node -> block slot
        budgets = [min(v.budget.max_nodes, self.max_nodes) for v in batch]
        max_depth = max(v.budget.max_depth for v in batch)
        for depth in range(1, max_depth + 1):
            for b, v in enumerate(batch):
                if depth > v.budget.max_depth:
                    frontier[b] = []
                    continue
                frontier[b] = builders[b].grow(trees[b], frontier[b], depth,
                                               budgets[b] - len(trees[b]), stop_rule, self.gen)
            if depth == max_depth or not any(frontier):
                break
            rows = [b for b in range(len(batch)) if frontier[b]]
            toks, pos, par = [], [], []
            for b in rows:
                t, base = trees[b], len(batch[b].context)
                toks.append([t.tokens[u] for u in frontier[b]])
                pos.append([base - 1 + depth] * len(frontier[b]))
                par.append([slot[b][t.parents[u]] for u in frontier[b]])
            logits = eng.append([batch[b].key for b in rows], toks, pos, par)
            for b, lg in zip(rows, logits):
                first = eng.block_size(batch[b].key) - len(frontier[b])
                for r, u in enumerate(frontier[b]):
                    slot[b][u] = first + r
                    trees[b].rows[u] = self._q(lg[r], batch[b])
        return [t.to_draft() for t in trees]
