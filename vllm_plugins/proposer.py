"""vLLM ``custom_class`` proposers hosting any specpack proposer.

Usage::

    vllm serve MODEL --speculative-config \
        '{"model": "specpack.vllm_plugins.SuffixDecoding", "num_speculative_tokens": 16}' \
        --additional-config '{"specpack": {"suffix_decoding_min_token_prob": 0.1}}'

vLLM builds the class with the whole ``VllmConfig`` and, after every step,
calls ``propose(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)`` with
one row per batch slot; it returns one draft (a chain, possibly empty) per
row. vLLM verifies chains only, so tree proposers hand over their best path.

One class per method of the method table with a ``vllm_class``
(:func:`specpack.methods.vllm_classes`), all built from
:class:`SpecpackProposer`; what is vLLM's own here is the row mapping
(:mod:`.rows`) and the chains; the step protocol is the shared
:class:`~specpack.step_driver.StepDriver`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, ClassVar

from specpack.config import json_object
from specpack.methods import METHODS, vllm_classes
from specpack.protocols import Budget, RequestView
from specpack.registry import build_pipeline
from specpack.step_driver import StepDriver
from specpack.vllm_plugins.rows import ContentRowResolver, RunnerRowResolver, find_runner
from specpack.vllm_plugins.version import installed_vllm_version, is_tested

logger = logging.getLogger("specpack.vllm")


def specpack_settings(vllm_config: Any) -> dict:
    """The ``specpack`` section of ``--additional-config`` (validated later)."""
    extra = json_object(getattr(vllm_config, "additional_config", None) or {},
                        "--additional-config")
    return json_object(extra.get("specpack", {}), "--additional-config field 'specpack'")


def _vocab_size(vllm_config: Any) -> int | None:
    """The target's vocabulary size (drafts with ids beyond it are dropped)."""
    try:
        return int(vllm_config.model_config.get_vocab_size())
    except Exception:
        return None


class SpecpackProposer:
    """Base ``custom_class`` proposer: row tracking and chains around a
    :class:`~specpack.step_driver.StepDriver`."""

    method: ClassVar[str]

    def __init__(self, vllm_config: Any):
        spec = vllm_config.speculative_config
        self.k = int(spec.num_speculative_tokens)
        self.max_model_len = int(vllm_config.model_config.max_model_len)
        proposer = build_pipeline(
            specpack_settings(vllm_config), method=self.method, max_nodes=self.k,
            where="--additional-config specpack",
        )
        self.driver = StepDriver(proposer, name=self.method, logger=logger,
                                 vocab_size=_vocab_size(vllm_config))
        self._read_internals = is_tested(installed_vllm_version())
        self._runner_resolver: RunnerRowResolver | None = None
        self._content_resolver = ContentRowResolver()
        self._mode = ""
        self._reported = (0, 0, time.monotonic())
        logger.info("specpack: %s proposer ready (k=%d, config=%s)",
                    self.method, self.k, self.driver.describe())

    @property
    def proposer(self):
        return self.driver.proposer

    # vLLM calls this after loading the target (unconditionally on CPU).
    def load_model(self, target_model: Any = None, *args, **kwargs) -> None:
        if self._read_internals:
            runner = find_runner(sys._getframe(1))
            if runner is not None:
                self._runner_resolver = RunnerRowResolver(runner)
        if target_model is not None:
            self.driver.attach_target(target_model)
        elif METHODS[self.method].needs_target:
            raise RuntimeError(f"specpack: method {self.method!r} drafts on the target model, "
                               "but vLLM did not hand it to load_model()")

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

    def _report_counts(self, every_s: float = 30.0) -> None:
        """Log the fault counters when they changed, at most every ``every_s``
        (operators and soak runs read them from the server log)."""
        errors, malformed, last = self._reported
        now = time.monotonic()
        d = self.driver
        if now - last >= every_s and (d.errors, d.malformed) != (errors, malformed):
            self._reported = (d.errors, d.malformed, now)
            logger.info("specpack: %s: %d proposer errors, %d malformed drafts dropped so far "
                        "(outputs unaffected)", self.method, d.errors, d.malformed)

    @property
    def num_errors(self) -> int:
        return self.driver.errors

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu,
                slot_mappings=None, **_: Any) -> list[list[int]]:
        driver = self.driver
        n_rows = len(sampled_token_ids)
        try:
            rows = self._resolve(sampled_token_ids, num_tokens_no_spec, token_ids_cpu)
        except Exception:
            driver.failed("row tracking")
            driver.untimed()
            return [[] for _ in range(n_rows)]
        for key in rows.finished:
            driver.release(key, finished=True)
        for key in rows.dropped:
            driver.release(key, finished=False)

        # feedback on the previous step first, so policies decide on fresh data;
        # a step is steady (its time is a decode step) when every row decoded
        # and was drafted for at the previous step
        accepted, views, view_rows = [], [], []
        steady = True
        for i in range(n_rows):
            key = rows.keys[i]
            if key is None:
                continue
            if len(sampled_token_ids[i]) == 0 or driver.drafted(key) is None:
                steady = False
            if len(sampled_token_ids[i]):
                accepted.append((key, len(sampled_token_ids[i]) - 1))
        driver.observe(accepted)
        for i in range(n_rows):
            key = rows.keys[i]
            if key is None or len(sampled_token_ids[i]) == 0:
                continue
            n = int(num_tokens_no_spec[i])
            room = max(0, min(self.k, self.max_model_len - n - 1))
            views.append(RequestView(key, token_ids_cpu[i, :n], Budget(room, room),
                                     accepted=len(sampled_token_ids[i]) - 1,
                                     num_prompt_tokens=rows.prompt_lens[i]))
            view_rows.append(i)
        out = driver.propose(views, timed=steady, other_rows=n_rows - len(views))
        self._report_counts()
        drafts: list[list[int]] = [[] for _ in range(n_rows)]
        for i, d in zip(view_rows, out):
            drafts[i] = d.best_path_tokens().tolist()
        return drafts


def _vllm_class(name: str, method: str) -> type[SpecpackProposer]:
    spec = METHODS[method]
    doc = (f"{spec.summary}.\n\nvLLM: ``--speculative-config '{{\"model\": "
           f"\"specpack.vllm_plugins.{name}\", \"num_speculative_tokens\": K}}'``; settings "
           f"(``--additional-config '{{\"specpack\": {{...}}}}'``): "
           f"{spec.config.__name__} ('specpack methods' lists them).")
    return type(name, (SpecpackProposer,), {"method": method, "__doc__": doc,
                                            "__module__": __name__, "__qualname__": name})


#: Entry points users may name in ``--speculative-config``'s ``model``,
#: one per method table row with a ``vllm_class``.
PROPOSER_CLASSES: dict[str, type[SpecpackProposer]] = {
    name: _vllm_class(name, method) for name, method in vllm_classes().items()}
globals().update(PROPOSER_CLASSES)
