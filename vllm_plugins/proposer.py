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
from typing import Any, ClassVar, Hashable

from specpack.config import ConfigError
from specpack.protocols import Budget, Feedback, RequestView
from specpack.registry import build_proposer
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
        self.proposer = build_proposer(
            specpack_settings(vllm_config), method=self.method, max_nodes=self.k,
            where="--additional-config specpack",
        )
        self._read_internals = is_tested(installed_vllm_version())
        self._runner_resolver: RunnerRowResolver | None = None
        self._content_resolver = ContentRowResolver()
        self._last_drafted: dict[Hashable, int] = {}
        self._errors = 0
        self._mode = ""
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
            return [[] for _ in range(n_rows)]

        drafts: list[list[int]] = []
        feedback = []
        for i in range(n_rows):
            key = rows.keys[i]
            if key is None:
                drafts.append([])
                continue
            n = int(num_tokens_no_spec[i])
            room = min(self.k, self.max_model_len - n - 1)
            accepted = len(sampled_token_ids[i]) - 1
            if key in self._last_drafted:
                feedback.append(Feedback(key, self._last_drafted[key], accepted))
            if room <= 0:
                drafts.append([])
                self._last_drafted[key] = 0
                continue
            try:
                view = RequestView(key, token_ids_cpu[i, :n], Budget(room, room),
                                   accepted=accepted, num_prompt_tokens=rows.prompt_lens[i])
                draft = self.proposer.propose([view])[0]
                tokens = draft.best_path_tokens()[:room].tolist()
            except Exception:
                self._log_error(f"propose (row {i})")
                try:
                    self.proposer.release(key, finished=False)
                except Exception:
                    pass
                tokens = []
            self._last_drafted[key] = len(tokens)
            drafts.append(tokens)
        if feedback:
            try:
                self.proposer.observe(feedback)
            except Exception:
                self._log_error("observe")
        return drafts


class SuffixDecoding(SpecpackProposer):
    """SuffixDecoding (arXiv:2411.04975) for vLLM: ``specpack.vllm_plugins.SuffixDecoding``.

    Settings (``--additional-config '{"specpack": {...}}'``) use the names of
    vLLM's upstream ``suffix`` method: ``suffix_decoding_max_tree_depth``,
    ``suffix_decoding_max_cached_requests``, ``suffix_decoding_max_spec_factor``,
    ``suffix_decoding_min_token_prob``.
    """

    method = "suffix"


#: Entry points users may name in ``--speculative-config``'s ``model``.
PROPOSER_CLASSES: dict[str, type[SpecpackProposer]] = {"SuffixDecoding": SuffixDecoding}
assert {n: c.method for n, c in PROPOSER_CLASSES.items()} == PROPOSER_METHODS
