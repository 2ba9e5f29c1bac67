"""Method names accepted by ``specpack bench --methods``.

``none`` (the engine without speculation), the engine's built-ins
(``vllm:ngram``, ``vllm:draft_model``) and specpack's methods
(``specpack:suffix``, ``specpack:draft_model``). Each resolves to what the
engine needs: a vLLM ``speculative_config`` (+ ``additional_config``) or a
proposer for the reference runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("vllm", "hf")
BUILTINS = {"vllm": ("vllm:ngram", "vllm:draft_model"), "hf": ()}
SPECPACK = {"vllm": ("specpack:suffix",), "hf": ("specpack:suffix", "specpack:draft_model")}


@dataclass(frozen=True)
class Method:
    name: str
    builtin: bool
    needs_draft: bool

    @property
    def is_none(self) -> bool:
        return self.name == "none"


def allowed(engine: str) -> list[str]:
    return ["none", *BUILTINS[engine], *SPECPACK[engine]]


def parse_methods(text: str, engine: str, draft: str | None) -> list[Method]:
    """Validate ``--methods``; add ``none`` and the applicable built-ins."""
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: allowed values: {', '.join(ENGINES)}")
    names = [n.strip() for n in text.split(",") if n.strip()]
    ok = allowed(engine)
    for n in names:
        if n not in ok:
            raise ValueError(f"--methods: {n!r} is not available on engine {engine!r}; "
                             f"allowed values: {', '.join(ok)}")
    for n in names:
        if n.endswith("draft_model") and not draft:
            raise ValueError(f"--methods: {n} needs --draft PATH")
    # always measure against the engine alone and its applicable built-ins
    must = ["none"] + [b for b in BUILTINS[engine] if draft or not b.endswith("draft_model")]
    ordered = must + [n for n in names if n not in must]
    return [Method(n, n in BUILTINS[engine], n.endswith("draft_model")) for n in ordered]


def vllm_configs(method: Method, draft: str | None, k: int) -> tuple[dict | None, dict]:
    """(speculative_config, additional_config) for vLLM."""
    if method.name == "none":
        return None, {}
    if method.name == "vllm:ngram":
        return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": 2,
                "prompt_lookup_max": 5}, {}
    if method.name == "vllm:draft_model":
        return {"method": "draft_model", "model": draft, "num_speculative_tokens": min(k, 4)}, {}
    if method.name == "specpack:suffix":
        return ({"model": "specpack.vllm_plugins.SuffixDecoding", "num_speculative_tokens": k},
                {"specpack": {}})
    raise ValueError(f"method {method.name} cannot run on vLLM")
