"""specpack.vllm_plugins: vLLM adapter.

Name a class here in ``--speculative-config``::

    {"model": "specpack.vllm_plugins.SuffixDecoding", "num_speculative_tokens": 16}

This package imports no vLLM module at import time; it reads what vLLM
passes to the proposer. :mod:`specpack.vllm_plugins.plugin` is the
``vllm.general_plugins`` entry point (version check, early config check).
"""

from specpack.vllm_plugins.proposer import PROPOSER_CLASSES, SpecpackProposer, SuffixDecoding

__all__ = ["PROPOSER_CLASSES", "SpecpackProposer", "SuffixDecoding"]
