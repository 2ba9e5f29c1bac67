"""SGLang ``--speculative-algorithm`` names -> specpack method, from the
method table (no heavy imports)."""

from specpack.methods import sglang_algorithms

#: model-free specpack methods served through SGLang's NGRAM-style verify path
ALGORITHMS: dict[str, str] = sglang_algorithms()
#: environment variable naming the JSON settings file
CONFIG_ENV = "SPECPACK_SGLANG_CONFIG"
#: draft-token width (root + draft nodes) when --speculative-num-draft-tokens is not given
DEFAULT_NUM_DRAFT_TOKENS = 16
