"""The ``CustomSpecAlgo`` subclass specpack registers for each algorithm name.

SGLang 0.5.23's default ``CustomSpecAlgo`` lacks ``create_future_map``,
``carries_draft_hidden_states`` and ``need_topk``, which the scheduler calls
at start-up; this class provides them, declares the algorithm NGRAM-like
(model-free: ``is_ngram()`` is true, no draft KV, no hidden states), sets its
own server defaults and reports its maximum draft width so KV memory is
sized for it.
"""

from __future__ import annotations

import logging

from sglang.srt.arg_groups.overrides import resolving_view
from sglang.srt.speculative.spec_registry import CustomSpecAlgo

from specpack.config import ConfigError
from specpack.sglang_plugins.names import ALGORITHMS, DEFAULT_NUM_DRAFT_TOKENS
from specpack.sglang_plugins.settings import load_settings

logger = logging.getLogger("specpack.sglang")

#: SGLang's own default cap on running requests for NGRAM
DEFAULT_MAX_RUNNING_REQUESTS = 48


class SpecpackSpecAlgo(CustomSpecAlgo):
    """A model-free specpack method verified on SGLang's NGRAM tree path."""

    @property
    def method(self) -> str:
        return ALGORITHMS[self.name]

    # model-free, NGRAM-style: drafts come from the host, the tree lives only
    # in the verify mask
    def is_ngram(self) -> bool:
        return True

    def has_draft_kv(self) -> bool:
        return False

    def carries_draft_hidden_states(self) -> bool:
        return False

    def need_topk(self) -> bool:
        return False

    def get_platform_worker_cls(self):
        """No out-of-tree platform replaces specpack's worker."""
        return None

    def create_future_map(self, device, req_to_token_pool, needs_cpu_seq_lens: bool = True,
                          needs_confidence_relay: bool = False):
        from sglang.srt.managers.overlap_utils import FutureMap

        return FutureMap(device, self, req_to_token_pool, needs_cpu_seq_lens,
                         needs_confidence_relay)

    def handle_server_args(self, server_args) -> None:
        """Defaults (only where the user gave none) and checks, before start-up.

        * ``speculative_num_draft_tokens`` (tree width incl. the root): 16;
        * ``speculative_eagle_topk`` (widest fan-out a tree may have):
          width - 1, so verify buffers fit any tree shape (and stays > 1,
          which attention backends read as "tree, use the mask");
        * ``speculative_num_steps``: ``width // topk`` (1), as SGLang's NGRAM
          does, so ``steps x topk <= width`` and KV is not over-reserved;
        * ``max_running_requests``: 48 (SGLang's NGRAM default);
        * overlap scheduling off (the proposer reads committed tokens
          synchronously), mixed chunked prefill off.
        """
        cfg = resolving_view(server_args)
        if cfg.device not in ("cuda", "cpu", "xpu"):
            raise ValueError(f"--speculative-algorithm {self.name}: device {cfg.device!r} is "
                             "not supported; allowed: cuda, cpu, xpu")
        width = cfg.speculative_num_draft_tokens
        if width is None:
            width = DEFAULT_NUM_DRAFT_TOKENS
            server_args.speculative_num_draft_tokens = width
        try:
            load_settings(self.name, width)
        except ConfigError as e:
            raise ValueError(f"specpack: invalid configuration, server not started:\n{e}") from None
        topk = max(1, width - 1)
        server_args.speculative_eagle_topk = topk
        if cfg.speculative_num_steps is None:
            server_args.speculative_num_steps = max(1, width // topk)
        if cfg.max_running_requests is None:
            server_args.max_running_requests = DEFAULT_MAX_RUNNING_REQUESTS
        if not cfg.disable_overlap_schedule:
            logger.info("specpack: %s runs with overlap scheduling off", self.name)
            server_args.disable_overlap_schedule = True
        server_args.enable_mixed_chunk = False

    def resolve_max_speculative_num_draft_tokens(self, server_args):
        """The width never changes at runtime: the configured one (default 16)."""
        width = resolving_view(server_args).speculative_num_draft_tokens
        return DEFAULT_NUM_DRAFT_TOKENS if width is None else width
