"""SGLang ``--speculative-algorithm`` names -> specpack method (no heavy imports)."""

#: model-free specpack methods served through SGLang's NGRAM-style verify path
ALGORITHMS: dict[str, str] = {
    "SPECPACK_SUFFIX": "suffix",
    "SPECPACK_DATASTORE": "datastore",
    "SPECPACK_TOKEN_RECYCLING": "token_recycling",
    "SPECPACK_CASCADE": "cascade",
}
#: environment variable naming the JSON settings file
CONFIG_ENV = "SPECPACK_SGLANG_CONFIG"
#: draft-token width (root + draft nodes) when --speculative-num-draft-tokens is not given
DEFAULT_NUM_DRAFT_TOKENS = 16
