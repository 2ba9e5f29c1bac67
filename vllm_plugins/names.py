"""vLLM entry-point class names -> specpack method (no heavy imports)."""

#: ``--speculative-config`` ``model`` values are ``specpack.vllm_plugins.<name>``.
PROPOSER_METHODS: dict[str, str] = {
    "SuffixDecoding": "suffix", "DraftModel": "draft_model", "CorpusDatastore": "datastore",
    "TokenRecycling": "token_recycling", "RetrievalCascade": "cascade", "RASD": "rasd"}
