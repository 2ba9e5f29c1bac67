"""Batched speculative decoding on ``transformers`` with tree verification.

One step for a batch of live requests:

1. the proposer (a policy is a proposer around proposers) drafts a
   :class:`~specpack.draft.Draft` tree per request from its committed
   tokens, through the :class:`~specpack.step_driver.StepDriver` every
   engine host shares (budgets, feedback, step timing, release);
2. one target forward over ``[root] + nodes`` per request (ragged batch),
   each node attending to the committed prefix (KV cache) plus its
   ancestors (tree mask), root at position ``C - 1``, node ``i`` at
   ``C - 1 + depth_i``;
3. verification (:mod:`specpack.kernels.verify`): greedy, or exact
   stochastic acceptance at ``temperature > 0``;
4. KV compaction: only the root's and the accepted nodes' keys/values are
   appended to the request's cache; the prefix is never recomputed.

tau (tokens per target forward, bonus included) counts verification
forwards; plain decoding gives exactly 1.0.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import numpy as np
import torch

from specpack.draft import Draft
from specpack.kernels.sampling import process_logits
from specpack.kernels.tree_mask import build_tree_batch
from specpack.kernels.verify import greedy_verify, sample_verify
from specpack.hf.kv_cache import CachedLM
from specpack.protocols import Budget, Proposer, RequestView
from specpack.step_driver import StepDriver

logger = logging.getLogger("specpack.hf")


class _NoSpeculation(Proposer):
    """Plain decoding through the same code path: every draft is empty."""

    def propose(self, batch, stop_rule=None):
        return [Draft.empty() for _ in batch]


@dataclass
class RequestStats:
    steps: int = 0               # target verification forwards
    generated: int = 0           # tokens emitted
    drafted: int = 0             # draft nodes proposed
    accepted: int = 0            # draft tokens accepted
    drafted_at_depth: list[int] = field(default_factory=list)
    accepted_at_depth: list[int] = field(default_factory=list)

    @property
    def tau(self) -> float:
        return self.generated / self.steps if self.steps else 0.0


@dataclass
class GenerateResult:
    tokens: list[list[int]]             # new tokens per request
    stats: list[RequestStats]
    wall_s: float
    steps: list[dict] = field(default_factory=list)  # per-step batch stats
    decisions: dict = field(default_factory=dict)     # the step driver's counters

    @property
    def tau(self) -> float:
        s = sum(r.steps for r in self.stats)
        return sum(r.generated for r in self.stats) / s if s else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        d = np.zeros(0)
        a = np.zeros(0)
        for r in self.stats:
            n = len(r.drafted_at_depth)
            if n > d.size:
                d = np.pad(d, (0, n - d.size))
                a = np.pad(a, (0, n - a.size))
            d[:n] += r.drafted_at_depth
            a[:n] += r.accepted_at_depth
        return [float(x / y) if y else 0.0 for x, y in zip(a, d)]

    def summary(self) -> dict:
        gen = sum(r.generated for r in self.stats)
        return {
            "requests": len(self.stats),
            "generated_tokens": gen,
            "target_forwards": sum(r.steps for r in self.stats),
            "tau": round(self.tau, 4),
            "drafted": sum(r.drafted for r in self.stats),
            "accepted": sum(r.accepted for r in self.stats),
            "acceptance_by_position": [round(x, 4) for x in self.acceptance_by_position],
            "wall_s": round(self.wall_s, 3),
            "tokens_per_s": round(gen / self.wall_s, 2) if self.wall_s else 0.0,
        }


def _add_at(lst: list[int], depth_upto: int) -> None:
    if len(lst) < depth_upto:
        lst.extend([0] * (depth_upto - len(lst)))
    for i in range(depth_upto):
        lst[i] += 1


def generate(target, prompts: Sequence[Sequence[int]], proposer: Proposer | None = None, *,
             max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0, max_nodes: int = 8, max_depth: int = 8,
             eos_token_id: int | None = None, batch_size: int | None = None,
             on_step=None, verifier=None, tree_attention: str | None = "auto",
             isolate_errors: bool = False) -> GenerateResult:
    """Speculative decoding of ``prompts`` (token-id lists) with ``target``.

    ``proposer`` is a :class:`~specpack.protocols.Proposer` (a policy is one
    too; None = plain decoding through the same code path); every request's
    budget is ``Budget(max_nodes, max_depth)``. The proposer is handed the
    target (``attach_target``) before the first step.
    ``batch_size`` caps requests decoded together (default: all).
    ``on_step(lm, keys, committed)`` is called after each step (tests inspect
    the cache). ``verifier(draft, probs, generator)`` replaces the stochastic
    verifier (tests use it to show a broken one is caught).
    ``tree_attention``: backend of :func:`specpack.kernels.tree_attention` for
    verification forwards (``auto``: FlashInfer > Triton > torch reference),
    or None for transformers' SDPA with a dense 4D mask.
    ``isolate_errors``: a proposer exception costs that request its drafts
    (as in the engines) instead of being raised (the default here, so tests
    see every failure).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    lm = target if isinstance(target, CachedLM) else CachedLM(target, tree_attention=tree_attention)
    driver = StepDriver(proposer or _NoSpeculation(), name="hf", logger=logger,
                        raise_errors=not isolate_errors,
                        vocab_size=getattr(lm.model.config, "vocab_size", None))
    driver.attach_target(lm.model)
    wants_topk = driver.proposer.wants_target_topk   # a top-k per request per step
    gen = torch.Generator().manual_seed(seed)
    n = len(prompts)
    batch_size = batch_size or n
    outputs: list[list[int]] = [[] for _ in range(n)]
    stats = [RequestStats() for _ in range(n)]
    committed = [list(map(int, p)) for p in prompts]
    keys: list[Hashable] = [("req", seed, i) for i in range(n)]
    last_accepted = [-1] * n
    step_log: list[dict] = []
    t0 = time.perf_counter()

    pending = list(range(n))
    while pending:
        live = pending[:batch_size]
        pending = pending[batch_size:]
        lm.extend([keys[i] for i in live], [committed[i][:-1] for i in live])  # prefill
        driver.untimed()  # the prefill is not a decode step
        while live:
            views = []
            for i in live:
                views.append(RequestView(keys[i], np.asarray(committed[i], np.int32),
                                         Budget(max_nodes, max_depth), accepted=last_accepted[i],
                                         num_prompt_tokens=len(prompts[i]),
                                         temperature=temperature, top_p=top_p))
            drafts = driver.propose(views)
            # one target forward over [root] + nodes per request
            tb = build_tree_batch(drafts)
            cu = tb.cu_tree.tolist()
            fw_tokens, fw_pos, fw_mask = [], [], []
            for b, (i, d) in enumerate(zip(live, drafts)):
                c = len(committed[i])
                n = len(d) + 1
                fw_tokens.append([committed[i][-1]] + d.tokens.tolist())
                fw_pos.append((tb.depths[cu[b]:cu[b + 1]] + (c - 1)).tolist())
                fw_mask.append(tb.dense_mask[cu[b]:cu[b + 1], :n].numpy())
            logits = lm.forward([keys[i] for i in live], fw_tokens, fw_pos, fw_mask,
                                tree_bits=tb.bits)
            accepted, finished = [], []
            for i, d, lg in zip(live, drafts, logits):
                if wants_topk:
                    # every verified position's top-k: what the target itself
                    # considered after the root and after each draft node
                    k = min(8, lg.shape[-1])
                    driver.observe_target_topk(
                        np.concatenate([[committed[i][-1]], d.tokens]).astype(np.int64),
                        lg.topk(k, dim=-1).indices.numpy())
                if temperature == 0:
                    res = greedy_verify(d, lg.argmax(-1))
                else:
                    res = (verifier or sample_verify)(d, process_logits(lg, temperature, top_p), gen)
                room = max_new_tokens - len(outputs[i])
                new = res.tokens[:room]
                if eos_token_id is not None and eos_token_id in new:
                    new = new[: new.index(eos_token_id) + 1]
                # cache = committed tokens minus the newest (the next root): keep
                # the root and the accepted nodes that precede the newest token
                lm.commit(keys[i], [0] + [a + 1 for a in res.accepted_nodes[: len(new) - 1]])
                outputs[i].extend(new)
                committed[i].extend(new)
                st = stats[i]
                st.steps += 1
                st.generated += len(new)
                st.drafted += len(d)
                acc = min(res.num_accepted, len(new))
                st.accepted += acc
                _add_at(st.drafted_at_depth, d.max_depth)
                if len(st.accepted_at_depth) < len(st.drafted_at_depth):
                    st.accepted_at_depth.extend([0] * (len(st.drafted_at_depth) - len(st.accepted_at_depth)))
                _add_at(st.accepted_at_depth, acc)
                last_accepted[i] = acc
                accepted.append((keys[i], acc))
                done = len(outputs[i]) >= max_new_tokens or (
                    eos_token_id is not None and new and new[-1] == eos_token_id)
                if done:
                    finished.append(i)
            step_log.append({"batch": len(live), "drafted": sum(len(d) for d in drafts),
                             "accepted": sum(a for _, a in accepted)})
            driver.observe(accepted)
            if on_step is not None:
                on_step(lm, {i: keys[i] for i in live}, committed)
            for i in finished:
                live.remove(i)
                lm.release(keys[i])
                driver.release(keys[i], finished=True)
    return GenerateResult(outputs, stats, time.perf_counter() - t0, step_log, driver.stats())
