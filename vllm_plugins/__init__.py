"""specpack.vllm_plugins: vLLM adapter.

Name a class here in ``--speculative-config``::

    {"model": "specpack.vllm_plugins.SuffixDecoding", "num_speculative_tokens": 16}

One class per method of the method table with a vLLM class name
(:func:`specpack.methods.vllm_classes`). Classes are imported lazily (vLLM
resolves them with ``getattr``), so the ``vllm.general_plugins`` entry
point :mod:`specpack.vllm_plugins.plugin` stays light: it imports neither
vLLM nor numba.
"""

from importlib import import_module

from specpack.methods import vllm_classes

_PROPOSER_MODULE = "specpack.vllm_plugins.proposer"
_EXPORTS = {name: _PROPOSER_MODULE for name in
            ("PROPOSER_CLASSES", "SpecpackProposer", *vllm_classes())}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'specpack.vllm_plugins' has no attribute {name!r}")
