"""vLLM entry-point class names -> specpack method, from the method table
(no heavy imports: the ``vllm.general_plugins`` entry point reads it)."""

from specpack.methods import vllm_classes

#: ``--speculative-config`` ``model`` values are ``specpack.vllm_plugins.<name>``.
PROPOSER_METHODS: dict[str, str] = vllm_classes()
