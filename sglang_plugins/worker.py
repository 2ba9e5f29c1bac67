"""SGLang worker hosting a specpack proposer on the model-free (NGRAM) verify path.

:class:`SpecpackNgramWorker` subclasses SGLang 0.5.23's ``NGRAMWorker`` and
replaces only its draft source: instead of the C++ n-gram corpus, each
decode step

1. builds a :class:`~specpack.protocols.RequestView` per request from
   ``req.origin_input_ids_unpadded + req.output_ids`` (overlap scheduling is
   off, so ``output_ids`` is complete), keyed by ``req.rid``;
2. asks the specpack proposer (any model-free method, optionally under a
   policy) for a ``Draft`` of at most ``width - 1`` nodes, through the
   shared :class:`~specpack.step_driver.StepDriver` (fault isolation, budget
   trimming, feedback, step timing);
3. converts it to SGLang's layout (:func:`~specpack.sglang_plugins.tree_layout.draft_to_tree`)
   and hands ``(tokens, mask)`` to the unchanged NGRAM verify path, which
   derives positions and first-child / next-sibling links from the mask and
   verifies the tree (greedy or rejection sampling) with the target;
4. after verification (``on_verify_complete_cpu``) reports each request's
   accepted count to the driver, which turns it into
   :class:`~specpack.protocols.Feedback`, and releases requests that left the
   batch (``finished`` when SGLang says so).

What is SGLang's own, and kept here (:class:`DraftBatcher`):

* SGLang calls ``on_verify_complete_cpu`` after every batch, prefills
  included; only the **first** report after a drafted step belongs to it.
  A later report means a non-drafted batch (a prefill) ran in between, so
  that interval is not reported as a decode step's time;
* requests are released when they leave the batch: ``finished`` is
  ``req.finished()`` (False for a preempted request, which may come back);
* the verify layout is a fixed-width tree per request (root + padding when
  nothing is drafted).

Every call into the proposer goes through the driver, so no proposer
exception reaches SGLang: the affected requests get an empty draft (root +
padding, i.e. plain decoding), the first failure is logged with its
traceback and all are counted (:attr:`DraftBatcher.num_errors`).
"""

from __future__ import annotations

import logging
from typing import Any, Hashable

import numpy as np

from sglang.srt.runtime_context import get_device, get_schedule, get_spec
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.ngram_worker import NGRAMWorker

from specpack.draft import Draft
from specpack.protocols import Budget, Proposer, RequestView
from specpack.registry import build_pipeline
from specpack.sglang_plugins.names import ALGORITHMS
from specpack.sglang_plugins.settings import load_settings
from specpack.sglang_plugins.tree_layout import draft_to_tree
from specpack.step_driver import StepDriver

logger = logging.getLogger("specpack.sglang")


class DraftBatcher:
    """Engine-light core of the worker: requests -> (tokens, mask) and feedback.

    Kept apart from SGLang's worker plumbing so it can be driven with real
    ``Req`` objects in tests. The step protocol itself (faults, budgets,
    feedback, timing, guarded release) is :class:`~specpack.step_driver.StepDriver`'s.
    """

    def __init__(self, proposer: Proposer, width: int, method: str = "specpack",
                 vocab_size: int | None = None):
        if width < 2:
            raise ValueError(f"width = {width}: the verify tree needs >= 2 slots "
                             "(root + at least one draft node)")
        self.driver = StepDriver(proposer, name=method, logger=logger, vocab_size=vocab_size)
        self.width = width
        self.method = method
        self._pending: list[Hashable] | None = None   # rids of the drafted step awaiting its report
        self._unlaid: set[Hashable] = set()           # rids whose draft could not be laid out
        self._reports = 0                             # verify reports since the last drafts()
        self._live: dict[Hashable, Any] = {}          # rid -> req of the last step

    @property
    def proposer(self) -> Proposer:
        return self.driver.proposer

    @property
    def num_errors(self) -> int:
        """Proposer (and layout) failures so far, logged once."""
        return self.driver.errors

    def drafts(self, reqs) -> tuple[np.ndarray, np.ndarray]:
        """Flat (tokens [bs * w] int64, mask [bs * w * w] bool) for ``reqs``."""
        # the interval since the last drafts() is one decode step only when
        # exactly that step's report came in between (no prefill batch ran)
        timed = self._reports == 1
        self._reports = 0
        self._release_departed(reqs)
        w = self.width
        views = []
        for req in reqs:
            ctx = np.asarray(list(req.origin_input_ids_unpadded) + list(req.output_ids),
                             np.int32)
            views.append(RequestView(req.rid, ctx, Budget(w - 1, w - 1),
                                     num_prompt_tokens=len(req.origin_input_ids_unpadded)))
        out = self.driver.propose(views, timed=timed)
        tokens = np.empty(len(reqs) * w, np.int64)
        mask = np.empty(len(reqs) * w * w, bool)
        self._unlaid = set()
        for b, (v, d) in enumerate(zip(views, out)):
            last = int(v.context[-1]) if v.context.size else 0
            try:
                t, m = draft_to_tree(d, last, w)
            except Exception:
                self.driver.failed(f"tree layout (request {v.key!r})")
                t, m = draft_to_tree(Draft.empty(), last, w)
                self._unlaid.add(v.key)
            tokens[b * w:(b + 1) * w] = t
            mask[b * w * w:(b + 1) * w * w] = m.reshape(-1)
        self._pending = [v.key for v in views]
        return tokens, mask

    def verified(self, num_correct_drafts_per_req) -> None:
        """Accepted draft tokens per request of the last drafted step (SGLang's
        order). SGLang reports every batch, prefills included; only the first
        report after :meth:`drafts` belongs to a drafted step."""
        self._reports += 1
        keys, self._pending = self._pending, None
        if keys is None:
            return
        counts = list(num_correct_drafts_per_req)
        if len(counts) != len(keys):
            return
        # a request whose draft was replaced by an empty tree verified nothing
        # of it: no feedback rather than a wrong drafted count
        self.driver.observe((k, a) for k, a in zip(keys, counts) if k not in self._unlaid)

    def _release_departed(self, reqs) -> None:
        current = {r.rid: r for r in reqs}
        for rid, req in self._live.items():
            if rid not in current:
                try:
                    finished = bool(req.finished())
                except Exception:
                    finished = False
                self.driver.release(rid, finished)
        self._live = current

    def reset(self) -> None:
        """SGLang flushed its caches: every tracked request is released
        (``finished=False``) and the next step is not timed."""
        for rid in list(self._live):
            self.driver.release(rid, False)
        self._live = {}
        self._pending = None
        self._unlaid = set()
        self._reports = 0
        self.driver.untimed()


class _NoCorpus:
    """Stands in for NGRAMWorker's C++ corpus where its verify path touches it."""

    def erase_match_state(self, req_ids) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def reset(self) -> None:
        pass


class SpecpackNgramWorker(NGRAMWorker):
    """``NGRAMWorker`` with a specpack proposer as its draft source.

    SGLang's scheduler builds it as every draft worker::

        cls = spec_algorithm.create_worker(server_args)
        cls(server_args=..., gpu_id=..., nccl_port=..., target_worker=...)

    and it reads its settings from the published runtime context
    (``get_schedule()``, ``get_spec()``, ``get_device()``), as
    ``NGRAMWorker.__init__`` does. It does **not** call
    ``NGRAMWorker.__init__``: that constructor builds the C++ ``NgramCorpus``
    (JIT-compiled on first use, and loads an external corpus if configured),
    which specpack replaces. It sets the same attributes instead, with
    :class:`_NoCorpus` where the inherited verify path touches the corpus;
    ``tests/sglang_plugins`` checks the hooked signatures against SGLang's.
    """

    def __init__(self, server_args, gpu_id: int, nccl_port: int, target_worker):
        BaseSpecWorker.__init__(self)
        self.server_args = server_args
        self.enable_overlap = not get_schedule().disable_overlap_schedule
        if self.enable_overlap:
            raise ValueError("specpack algorithms need disable_overlap_schedule = True "
                             "(--disable-overlap-schedule; set automatically unless overridden)")
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
        if name not in ALGORITHMS:
            raise ValueError(f"speculative_algorithm = {name!r} is not a specpack algorithm; "
                             f"allowed: {', '.join(ALGORITHMS)}")
        method = ALGORITHMS[name]
        settings = load_settings(name, self.draft_token_num)
        proposer = build_pipeline(settings, method=method, max_nodes=self.draft_token_num - 1,
                                  where="specpack settings")
        vocab = getattr(getattr(self.model_runner, "model_config", None), "vocab_size", None)
        self.batcher = DraftBatcher(proposer, self.draft_token_num, method,
                                    vocab_size=vocab if isinstance(vocab, int) else None)
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
