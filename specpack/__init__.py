"""specpack: speculative-decoding proposers and policies for vLLM and SGLang.

Core (this package) is engine-agnostic: the :class:`~specpack.draft.Draft`
tree type, the proposer/policy protocols, validated configs and the method
registry. Engine adapters live in ``specpack.vllm_plugins`` and
``specpack.sglang_plugins``.
"""

from specpack.config import ConfigError, parse_method_config
from specpack.draft import Draft
from specpack.protocols import Budget, Feedback, Policy, Proposer, RequestView

__version__ = "0.1.0"

__all__ = [
    "Budget", "ConfigError", "Draft", "Feedback", "Policy", "Proposer",
    "RequestView", "parse_method_config", "__version__",
]
