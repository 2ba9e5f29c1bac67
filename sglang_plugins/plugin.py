"""``sglang.srt.plugins`` entry point: registers specpack's algorithm names.

``python -m sglang.launch_server`` loads general plugins before it parses
arguments, so ``--speculative-algorithm SPECPACK_SUFFIX`` (and the other
names in :data:`~specpack.sglang_plugins.names.ALGORITHMS`) resolve through
``SpeculativeAlgorithm.from_string``. The worker class is imported only when
SGLang builds the worker.
"""

from __future__ import annotations

import logging
import os

from specpack.config import ConfigError
from specpack.sglang_plugins.names import ALGORITHMS, CONFIG_ENV
from specpack.sglang_plugins.version import check_sglang_version

logger = logging.getLogger("specpack.sglang")
_done = False


def _worker_factory(server_args):
    from specpack.sglang_plugins.worker import SpecpackNgramWorker

    return SpecpackNgramWorker


def _validate(server_args) -> None:
    """SGLang's ``validate_server_args`` hook: the settings file, before start-up."""
    from sglang.srt.arg_groups.overrides import resolving_view

    from specpack.sglang_plugins.settings import load_settings

    cfg = resolving_view(server_args)
    try:
        load_settings(str(cfg.speculative_algorithm).upper(), cfg.speculative_num_draft_tokens)
    except ConfigError as e:
        raise ValueError(f"specpack: invalid configuration, server not started:\n{e}") from None


def register() -> None:
    """Entry point called by ``sglang.srt.plugins.load_plugins()``."""
    global _done
    if _done:
        return
    _done = True
    if not logging.getLogger("specpack").handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(levelname)s [%(name)s] %(message)s"))
        logging.getLogger("specpack").addHandler(h)
        logging.getLogger("specpack").setLevel(logging.INFO)
    if not check_sglang_version():
        return
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from specpack.sglang_plugins.algo import SpecpackSpecAlgo

    for name in ALGORITHMS:
        SpeculativeAlgorithm.register(name, supports_overlap=False,
                                      validate_server_args=_validate,
                                      spec_class=SpecpackSpecAlgo)(_worker_factory)
    if os.environ.get(CONFIG_ENV):
        logger.info("specpack: settings from %s=%s", CONFIG_ENV, os.environ[CONFIG_ENV])
    logger.info("specpack: registered SGLang algorithms %s", ", ".join(ALGORITHMS))
