"""The embedded default model pair (target + draft + tokenizer) and its recipe.

``default/`` holds a small Llama target and draft trained from scratch on this
repository's recipe (:mod:`specpack.models.train`) over CPython standard
library sources, saved in fp16 safetensors, so that ``make demo`` and
``specpack bench`` show real acceptance with no model hub.
"""

from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent / "default"


def default_target() -> str:
    return str(DEFAULT_DIR / "target")


def default_draft() -> str:
    return str(DEFAULT_DIR / "draft")


def available() -> bool:
    return (DEFAULT_DIR / "target" / "model.safetensors").exists() and (
        DEFAULT_DIR / "draft" / "model.safetensors").exists()
