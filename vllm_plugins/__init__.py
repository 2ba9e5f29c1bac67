"""specpack.vllm_plugins: vLLM adapter.

Name a class here in ``--speculative-config``::

    {"model": "specpack.vllm_plugins.SuffixDecoding", "num_speculative_tokens": 16}

Classes are imported lazily (vLLM resolves them with ``getattr``), so the
``vllm.general_plugins`` entry point :mod:`specpack.vllm_plugins.plugin`
stays light: it imports neither vLLM nor numba.
"""

from importlib import import_module

_EXPORTS = {
    "PROPOSER_CLASSES": "specpack.vllm_plugins.proposer",
    "SpecpackProposer": "specpack.vllm_plugins.proposer",
    "SuffixDecoding": "specpack.vllm_plugins.proposer",
    "DraftModel": "specpack.vllm_plugins.proposer",
    "CorpusDatastore": "specpack.vllm_plugins.proposer",
    "TokenRecycling": "specpack.vllm_plugins.proposer",
    "RetrievalCascade": "specpack.vllm_plugins.proposer",
    "RASD": "specpack.vllm_plugins.proposer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'specpack.vllm_plugins' has no attribute {name!r}")
