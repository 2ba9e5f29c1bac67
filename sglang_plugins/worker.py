"""SGLang worker hosting a specpack proposer on the model-free (NGRAM) verify path.

:class:`SpecpackNgramWorker` subclasses SGLang 0.5.23's ``NGRAMWorker`` and
replaces only its draft source: instead of the C++ n-gram corpus, each
decode step

1. builds a :class:`~specpack.protocols.RequestView` per request from
   ``req.origin_input_ids_unpadded + req.output_ids`` (overlap scheduling is
   off, so ``output_ids`` is complete), keyed by ``req.rid``;
2. asks the specpack proposer (any model-free method, optionally under a
   policy) for a ``Draft`` with at most ``width - 1`` nodes;
3. converts it to SGLang's layout (:func:`~specpack.sglang_plugins.tree_layout.draft_to_tree`)
   and hands ``(tokens, mask)`` to the unchanged NGRAM verify path, which
   derives positions and first-child / next-sibling links from the mask and
   verifies the tree (greedy or rejection sampling) with the target;
4. after verification (``on_verify_complete_cpu``) feeds each request's
   accepted count back as :class:`~specpack.protocols.Feedback`, and
   releases requests that left the batch (``finished`` when SGLang says so).

A proposer exception never reaches SGLang: the affected requests get an
empty draft (root + padding, i.e. plain decoding), logged once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from sglang.srt.runtime_context import get_device, get_schedule, get_spec
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.ngram_worker import NGRAMWorker

from specpack.draft import Draft
from specpack.protocols import Budget, Feedback, RequestView, propose_isolated
from specpack.registry import build_pipeline
from specpack.sglang_plugins.names import ALGORITHMS
from specpack.sglang_plugins.settings import load_settings
from specpack.sglang_plugins.tree_layout import draft_to_tree

logger = logging.getLogger("specpack.sglang")


class DraftBatcher:
    """Engine-light core of the worker: requests -> (tokens, mask) and feedback.

    Kept apart from SGLang's worker plumbing so it can be driven with real
    ``Req``-like objects in tests.
    """

    def __init__(self, proposer: Any, width: int, method: str = "specpack"):
        self.proposer = proposer
        self.width = width
        self.method = method
        self._last: list[tuple[str, int]] = []     # (rid, drafted) of the last step
        self._live: dict[str, Any] = {}            # rid -> req of the last step
        self._errors = 0
        self._prev_step: tuple[int, int, float] | None = None

    def _log_error(self, where: str) -> None:
        self._errors += 1
        if self._errors == 1:
            logger.exception("specpack: %s proposer failed in %s; affected requests get no "
                             "drafts (output stays correct). Further failures are counted.",
                             self.method, where)

    @property
    def num_errors(self) -> int:
        return self._errors

    def drafts(self, reqs) -> tuple[np.ndarray, np.ndarray]:
        """Flat (tokens [bs * w] int64, mask [bs * w * w] bool) for ``reqs``."""
        now = time.perf_counter()
        self._release_departed(reqs)
        w = self.width
        views = []
        for req in reqs:
            ctx = np.asarray(list(req.origin_input_ids_unpadded) + list(req.output_ids),
                             np.int32)
            views.append(RequestView(req.rid, ctx, Budget(w - 1, w - 1),
                                     num_prompt_tokens=len(req.origin_input_ids_unpadded)))
        out = propose_isolated(self.proposer, views,
                               lambda v: self._log_error(f"propose (request {v.key!r})"))
        out = [Draft.empty() if d is None else d for d in out]
        tokens = np.empty(len(reqs) * w, np.int64)
        mask = np.empty(len(reqs) * w * w, bool)
        self._last = []
        for b, (v, d) in enumerate(zip(views, out)):
            last = int(v.context[-1]) if v.context.size else 0
            try:
                t, m = draft_to_tree(d, last, w)
                drafted = min(len(d), w - 1)
            except Exception:
                self._log_error(f"tree layout (request {v.key!r})")
                t, m = draft_to_tree(Draft.empty(), last, w)
                drafted = 0
            tokens[b * w:(b + 1) * w] = t
            mask[b * w * w:(b + 1) * w * w] = m.reshape(-1)
            self._last.append((v.key, drafted))
        if self._prev_step is not None and hasattr(self.proposer, "observe_step"):
            n, depth, t0 = self._prev_step
            self.proposer.observe_step(n, depth, now - t0)
        self._prev_step = (len(reqs) + sum(d for _, d in self._last),
                           max((d for _, d in self._last), default=0), now)
        return tokens, mask

    def verified(self, num_correct_drafts_per_req) -> None:
        """Accepted draft tokens per request of the last drafted step (SGLang's
        order). SGLang reports every batch, prefills included; only the first
        report after :meth:`drafts` belongs to a drafted step."""
        counts = list(num_correct_drafts_per_req)
        last, self._last = self._last, []
        if len(counts) != len(last):
            return
        fb = [Feedback(rid, drafted, int(min(a, drafted)))
              for (rid, drafted), a in zip(last, counts)]
        if fb:
            try:
                self.proposer.observe(fb)
            except Exception:
                self._log_error("observe")

    def _release_departed(self, reqs) -> None:
        current = {r.rid: r for r in reqs}
        for rid, req in self._live.items():
            if rid not in current:
                try:
                    finished = bool(req.finished())
                except Exception:
                    finished = False
                try:
                    self.proposer.release(rid, finished=finished)
                except Exception:
                    self._log_error("release")
        self._live = current

    def reset(self) -> None:
        for rid in list(self._live):
            self.proposer.release(rid, finished=False)
        self._live = {}
        self._last = []
        self._prev_step = None


class _NoCorpus:
    """Stands in for NGRAMWorker's C++ corpus where its verify path touches it."""

    def erase_match_state(self, req_ids) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def reset(self) -> None:
        pass


class SpecpackNgramWorker(NGRAMWorker):
    """``NGRAMWorker`` with a specpack proposer as its draft source."""

    def __init__(self, server_args, gpu_id: int, nccl_port: int, target_worker):
        BaseSpecWorker.__init__(self)
        self.server_args = server_args
        self.enable_overlap = not get_schedule().disable_overlap_schedule
        if self.enable_overlap:
            raise ValueError("specpack algorithms need --disable-overlap-schedule "
                             "(set automatically unless overridden)")
        self._target_worker = target_worker
        self.model_runner = target_worker.model_runner
        self.page_size = get_schedule().page_size
        spec = get_spec()
        self.draft_token_num: int = spec.speculative_num_draft_tokens
        self.speculative_num_draft_tokens = spec.speculative_num_draft_tokens
        self.max_trie_depth: int = spec.speculative_num_draft_tokens
        self.topk = spec.speculative_eagle_topk
        self.speculative_num_steps = spec.speculative_num_steps
        self.device = get_device().device
        self.adaptive_controller = None
        self._prev_decode_rids: set = set()
        self.grammar_tree_host = None
        self.ngram_corpus = _NoCorpus()
        name = str(spec.speculative_algorithm).upper()
        method = ALGORITHMS[name]
        settings = load_settings(name, self.draft_token_num)
        proposer = build_pipeline(settings, method=method, max_nodes=self.draft_token_num - 1,
                                  where="specpack settings")
        self.batcher = DraftBatcher(proposer, self.draft_token_num, method)
        logger.info("specpack: %s worker ready (width %d, method %s)", name,
                    self.draft_token_num, method)

    # --- draft source -------------------------------------------------------
    def _prepare_draft_tokens(self, batch):
        return self.batcher.drafts(batch.reqs)

    def _update_ngram_corpus(self, batch):
        """Proposers read committed tokens at the next step; nothing to push."""

    def on_verify_complete_cpu(self, num_correct_drafts_per_req, batch_size: int = 0) -> None:
        self.batcher.verified(num_correct_drafts_per_req)

    def clear_cache_pool(self):
        self.batcher.reset()
        self._prev_decode_rids = set()

    # --- the C++ corpus API has no specpack equivalent -------------------------
    def add_external_corpus(self, corpus_id, token_chunks):
        raise NotImplementedError("specpack algorithms take corpora through "
                                  "'specpack datastore build' and SPECPACK_DATASTORE")

    def commit_corpus_load(self, corpus_id, loaded_token_count):
        raise NotImplementedError("see add_external_corpus")

    def remove_external_corpus(self, corpus_id):
        raise NotImplementedError("see add_external_corpus")

    def list_external_corpora(self):
        return {}
