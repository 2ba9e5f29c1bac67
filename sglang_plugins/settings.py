"""specpack settings for SGLang: a JSON file named by ``SPECPACK_SGLANG_CONFIG``.

SGLang has no free-form config flag, so method settings (and an optional
``policy``) live in a file; the draft width comes from
``--speculative-num-draft-tokens``. Validated with the same models as vLLM.
"""

from __future__ import annotations

import os

from specpack.config import ConfigError, json_object
from specpack.registry import validate_pipeline
from specpack.sglang_plugins.names import ALGORITHMS, CONFIG_ENV


def load_settings(algorithm: str, num_draft_tokens: int | None = None,
                  environ=os.environ) -> dict:
    """The validated settings for ``algorithm`` (a name in :data:`ALGORITHMS`)."""
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"--speculative-algorithm {algorithm!r} is not a specpack algorithm; "
                          f"allowed values: {', '.join(sorted(ALGORITHMS))}")
    method = ALGORITHMS[algorithm]
    path = environ.get(CONFIG_ENV)
    raw: dict = {}
    where = "specpack settings"
    if path:
        where = f"{CONFIG_ENV}={path}"
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            raise ConfigError(f"{where}: file not found") from None
        raw = json_object(text, where)
    max_nodes = None if num_draft_tokens is None else num_draft_tokens - 1
    if max_nodes is not None and max_nodes < 1:
        raise ConfigError(f"--speculative-num-draft-tokens = {num_draft_tokens}: a specpack "
                          "algorithm needs >= 2 (the root plus at least one draft token)")
    validate_pipeline(raw, method=method, max_nodes=max_nodes, where=where)
    return raw
