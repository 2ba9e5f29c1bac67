"""vLLM ``custom_class`` proposers hosting any specpack proposer.

Usage::

    vllm serve MODEL --speculative-config \
        '{"model": "specpack.vllm_plugins.SuffixDecoding", "num_speculative_tokens": 16}' \
        --additional-config '{"specpack": {"suffix_decoding_min_token_prob": 0.1}}'

vLLM builds the class with the whole ``VllmConfig`` and, after every step,
calls ``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)`` with
one row per batch slot; it returns one draft (a chain, possibly empty) per
row. vLLM verifies chains only, so tree proposers hand over their best path.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, ClassVar, Hashable

from specpack.config import ConfigError
from specpack.protocols import Budget, Feedback, RequestView, propose_isolated
from specpack.registry import build_pipeline
from specpack.vllm_plugins.names import PROPOSER_METHODS
from specpack.vllm_plugins.rows import ContentRowResolver, RunnerRowResolver, find_runner
from specpack.vllm_plugins.version import installed_vllm_version, is_tested

logger = logging.getLogger("specpack.vllm")


def specpack_settings(vllm_config: Any) -> dict:
    """The ``specpack`` section of ``--additional-config`` (validated later)."""
    extra = getattr(vllm_config, "additional_config", None) or {}
    if not isinstance(extra, dict):
        raise ConfigError("--additional-config must be a JSON object")
    section = extra.get("specpack", {})
    if not isinstance(section, dict):
        raise ConfigError(
            "--additional-config field 'specpack' must be a JSON object of specpack "
            f"settings, got {type(section).__name__}"
        )
    return section


class SpecpackProposer:
    """Base ``custom_class`` proposer: row tracking, budgets, fault isolation."""

    method: ClassVar[str]

    def __init__(self, vllm_config: Any):
        spec = vllm_config.speculative_config
        self.k = int(spec.num_speculative_tokens)
        self.max_model_len = int(vllm_config.model_config.max_model_len)
        self.proposer = build_pipeline(
            specpack_settings(vllm_config), method=self.method, max_nodes=self.k,
            where="--additional-config specpack",
        )
        self._read_internals = is_tested(installed_vllm_version())
        self._runner_resolver: RunnerRowResolver | None = None
        self._content_resolver = ContentRowResolver()
        self._last_drafted: dict[Hashable, int] = {}
        self._errors = 0
        self._mode = ""
        self._prev_step: tuple[int, int, float] | None = None
        logger.info("specpack: %s proposer ready (k=%d, config=%s)",
                    self.method, self.k, self.proposer.config.model_dump())

    # vLLM calls this after loading the target (unconditionally on CPU).
    def load_model(self, *args, **kwargs) -> None:
        if self._read_internals:
            runner = find_runner(sys._getframe(1))
            if runner is not None:
                self._runner_resolver = RunnerRowResolver(runner)

    def _resolve(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu):
        r = self._runner_resolver
        if r is None and self._read_internals:
            runner = find_runner(sys._getframe(2), token_ids_cpu)
            if runner is not None:
                r = self._runner_resolver = RunnerRowResolver(runner)
        if r is not None and r.owns(token_ids_cpu, len(sampled_token_ids)):
            self._log_mode("request ids from the vLLM model runner")
            return r.resolve(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)
        self._log_mode("rows matched by content (no vLLM internals read)")
        return self._content_resolver.resolve(sampled_token_ids, num_tokens_no_spec,
                                              token_ids_cpu)

    def _log_mode(self, mode: str) -> None:
        if mode != self._mode:
            self._mode = mode
            logger.info("specpack: row tracking: %s", mode)

    def _log_error(self, where: str) -> None:
        self._errors += 1
        if self._errors == 1:
            logger.exception(
                "specpack: %s proposer failed in %s; the affected rows get no drafts "
                "(output stays correct). Further failures are counted, not logged.",
                self.method, where)

    @property
    def num_errors(self) -> int:
        return self._errors

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu,
                slot_mappings=None, **_: Any) -> list[list[int]]:
        now = time.perf_counter()
        n_rows = len(sampled_token_ids)
        try:
            rows = self._resolve(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)
            for key in rows.finished:
                self._last_drafted.pop(key, None)
                self.proposer.release(key, finished=True)
            for key in rows.dropped:
                self._last_drafted.pop(key, None)
                self.proposer.release(key, finished=False)
        except Exception:
            self._log_error("row tracking")
            self._prev_step = None
            return [[] for _ in range(n_rows)]

        # feedback on the previous step first, so policies decide on fresh data
        feedback, views, view_rows = [], [], []
        steady = True  # no prefill in the step that just ran: its time is a decode step
        for i in range(n_rows):
            key = rows.keys[i]
            if key is None:
                continue
            if len(sampled_token_ids[i]) == 0:
                steady = False
                continue
            accepted = len(sampled_token_ids[i]) - 1
            if key in self._last_drafted:
                feedback.append(Feedback(key, self._last_drafted[key], accepted))
            else:
                steady = False
        if feedback:
            try:
                self.proposer.observe(feedback)
            except Exception:
                self._log_error("observe")
        prev = self._prev_step
        if prev is not None and steady and hasattr(self.proposer, "observe_step"):
            try:
                self.proposer.observe_step(prev[0], prev[1], now - prev[2])
            except Exception:
                self._log_error("observe_step")

        drafts: list[list[int]] = [[] for _ in range(n_rows)]
        for i in range(n_rows):
            key = rows.keys[i]
            if key is None:
                continue
            n = int(num_tokens_no_spec[i])
            room = min(self.k, self.max_model_len - n - 1)
            self._last_drafted[key] = 0
            if room <= 0:
                continue
            views.append(RequestView(key, token_ids_cpu[i, :n], Budget(room, room),
                                     accepted=len(sampled_token_ids[i]) - 1,
                                     num_prompt_tokens=rows.prompt_lens[i]))
            view_rows.append(i)
        if views:
            def failed(v: RequestView) -> None:
                self._log_error(f"propose (request {v.key!r})")
                try:
                    self.proposer.release(v.key, finished=False)
                except Exception:
                    pass

            out = propose_isolated(self.proposer, views, failed)
            for i, v, d in zip(view_rows, views, out):
                try:
                    tokens = [] if d is None else d.best_path_tokens()[:v.budget.max_nodes].tolist()
                except Exception:
                    self._log_error(f"draft of row {i}")
                    tokens = []
                drafts[i] = tokens
                self._last_drafted[v.key] = len(tokens)
        lens = [len(d) for d in drafts]
        self._prev_step = (n_rows + sum(lens), max(lens, default=0), now)
        return drafts


class SuffixDecoding(SpecpackProposer):
    """SuffixDecoding (arXiv:2411.04975) for vLLM: ``specpack.vllm_plugins.SuffixDecoding``.

    Settings (``--additional-config '{"specpack": {...}}'``) use the names of
    vLLM's upstream ``suffix`` method: ``suffix_decoding_max_tree_depth``,
    ``suffix_decoding_max_cached_requests``, ``suffix_decoding_max_spec_factor``,
    ``suffix_decoding_min_token_prob``.
    """

    method = "suffix"


class DraftModel(SpecpackProposer):
    """A small ``transformers`` causal LM drafts inside the vLLM worker:
    ``specpack.vllm_plugins.DraftModel``.

    Settings (``--additional-config '{"specpack": {"draft_model": PATH, ...}}'``)
    are those of the ``draft_model`` method (``mode``, ``tree_width``, ...).
    The drafter runs on CPU in the worker process with its own KV cache per
    request, so SVIP/threshold/cumulative policies see its distributions.
    vLLM verifies chains: a tree mode hands over its best path.
    """

    method = "draft_model"


class CorpusDatastore(SpecpackProposer):
    """REST corpus datastore: ``specpack.vllm_plugins.CorpusDatastore``;
    settings: ``datastore_path`` (built by ``specpack datastore build``),
    ``max_match``, ``min_match``, ``max_matches``, ``continuation_length``,
    ``max_tree_nodes``. The index is memory-mapped: all workers share it."""

    method = "datastore"


class TokenRecycling(SpecpackProposer):
    """Token Recycling: ``specpack.vllm_plugins.TokenRecycling``. vLLM's
    ``custom_class`` hook receives token ids only, so the table learns from
    committed tokens (bigrams), not from the target's top-k."""

    method = "token_recycling"


class RetrievalCascade(SpecpackProposer):
    """Hierarchical retrieval cascade: ``specpack.vllm_plugins.RetrievalCascade``."""

    method = "cascade"


class RASD(SpecpackProposer):
    """Draft model + retrieval fusion (RASD): ``specpack.vllm_plugins.RASD``;
    needs ``draft_model`` (a transformers checkpoint run in the worker)."""

    method = "rasd"


#: Entry points users may name in ``--speculative-config``'s ``model``.
PROPOSER_CLASSES: dict[str, type[SpecpackProposer]] = {
    "SuffixDecoding": SuffixDecoding, "DraftModel": DraftModel,
    "CorpusDatastore": CorpusDatastore, "TokenRecycling": TokenRecycling,
    "RetrievalCascade": RetrievalCascade, "RASD": RASD}
assert {n: c.method for n, c in PROPOSER_CLASSES.items()} == PROPOSER_METHODS
