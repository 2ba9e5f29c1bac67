"""``vllm.general_plugins`` entry point: runs in every vLLM process.

* checks the installed vLLM against the tested range and says what it found;
* in a server process started with ``--speculative-config`` naming a specpack
  class, validates that class name and the ``specpack`` section of
  ``--additional-config`` *before* the engine starts, exiting with a message
  that names the bad field and the allowed values.

It patches nothing in vLLM, and imports neither vLLM nor numba: vLLM's CPU
worker scans all loaded modules right after loading plugins and fails on
llvmlite objects, so heavy imports wait until the proposer is built.
"""

from __future__ import annotations

import logging
import sys

from specpack.config import ConfigError, json_object
from specpack.registry import validate_pipeline
from specpack.vllm_plugins.names import PROPOSER_METHODS
from specpack.vllm_plugins.version import check_vllm_version

logger = logging.getLogger("specpack.vllm")
PREFIX = "specpack.vllm_plugins."

_done = False


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def validate_engine_args(speculative_config, additional_config) -> str | None:
    """Validate specpack's share of vLLM engine args; return the method or None.

    Accepts dicts or JSON strings. Raises :class:`ConfigError`.
    """
    spec = json_object(speculative_config, "--speculative-config")
    model = spec.get("model")
    if not isinstance(model, str) or not model.startswith(PREFIX):
        return None
    name = model[len(PREFIX):]
    if name not in PROPOSER_METHODS:
        raise ConfigError(
            f"--speculative-config field 'model' = {model!r} is not a specpack proposer; "
            f"allowed values: {', '.join(PREFIX + n for n in sorted(PROPOSER_METHODS))}"
        )
    k = spec.get("num_speculative_tokens")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(
            f"--speculative-config field 'num_speculative_tokens' = {k!r}: "
            "a specpack proposer needs an integer >= 1"
        )
    extra = json_object(additional_config, "--additional-config")
    method = PROPOSER_METHODS[name]
    validate_pipeline(json_object(extra.get("specpack", {}),
                                  "--additional-config field 'specpack'"),
                      method=method, max_nodes=k, where="--additional-config specpack")
    return method


def _setup_logging() -> None:
    """Show specpack's INFO lines next to vLLM's, unless the app configured logging."""
    root = logging.getLogger("specpack")
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(name)s] %(message)s",
                                           "%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def register() -> None:
    """Entry point called by ``vllm.plugins.load_general_plugins()``."""
    global _done
    if _done:
        return
    _done = True
    _setup_logging()
    check_vllm_version()
    argv = sys.argv
    spec = _flag_value(argv, "--speculative-config")
    if spec is None:
        spec = _flag_value(argv, "-sc")  # vLLM's short alias
    if spec is None:
        return
    try:
        validate_engine_args(spec, _flag_value(argv, "--additional-config"))
    except ConfigError as e:
        raise SystemExit(f"specpack: invalid configuration, server not started:\n{e}") from None
