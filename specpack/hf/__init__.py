"""specpack.hf: the reference runtime on Hugging Face ``transformers``.

Hosts every specpack proposer (trees included) against a real model and is
the ground truth for losslessness tests. See :func:`generate`.

Needs ``transformers >= 4.56`` (``from_pretrained(dtype=...)`` and the
per-layer cache API, ``Cache.layers``); an older one fails here with a
message saying so rather than deep inside a forward.
"""

from importlib import import_module

#: oldest transformers release the runtime and the draft-model proposer work with
MIN_TRANSFORMERS = (4, 56)


def check_transformers(found: str | None = None) -> None:
    import re

    if found is None:
        from importlib.metadata import version

        found = version("transformers")
    m = re.match(r"(\d+)\.(\d+)", found)
    if m is None or (int(m.group(1)), int(m.group(2))) < MIN_TRANSFORMERS:
        raise ImportError(f"specpack.hf needs transformers >= "
                          f"{'.'.join(map(str, MIN_TRANSFORMERS))}, found {found}; "
                          "pip install -U 'transformers>=4.56'")


check_transformers()

__all__ = ["GenerateResult", "generate", "check_transformers", "MIN_TRANSFORMERS"]


def __getattr__(name):
    if name in ("GenerateResult", "generate"):
        return getattr(import_module("specpack.hf.runtime"), name)
    raise AttributeError(f"module 'specpack.hf' has no attribute {name!r}")
