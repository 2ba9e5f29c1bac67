"""specpack: speculative-decoding proposers and policies for vLLM and SGLang.

Core (this package) is engine-agnostic: the :class:`~specpack.draft.Draft`
tree type, the proposer base class, validated configs, the method table
and the step driver every engine host shares. Engine adapters live in ``specpack.vllm_plugins`` and
``specpack.sglang_plugins``.

Imports here are lazy: engine plugin entry points import ``specpack`` in
every engine process, and must not pull in numba/llvmlite before the engine
has finished its own start-up (vLLM's CPU worker scans every loaded module
at start-up and fails on llvmlite objects).
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Budget": "specpack.protocols",
    "ConfigError": "specpack.config",
    "Draft": "specpack.draft",
    "Feedback": "specpack.protocols",
    "METHODS": "specpack.methods",
    "Proposer": "specpack.protocols",
    "RequestView": "specpack.protocols",
    "StepDriver": "specpack.step_driver",
    "parse_method_config": "specpack.config",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'specpack' has no attribute {name!r}")
