"""Method names accepted by ``specpack bench --methods``.

``none`` (the engine without speculation), the engine's built-ins
(``vllm:ngram``, ``vllm:draft_model``) and specpack's methods
(``specpack:<method>`` for every row of the method table the engine can
host: :mod:`specpack.methods`), each optionally with a policy preset after
``@``:

* ``@kN`` - fixed length N (e.g. ``specpack:suffix@k4``);
* ``@svip``, ``@threshold``, ``@cumulative``, ``@ema`` - adaptive length;
* ``@ucb``, ``@exp3``, ``@thompson`` - bandit over lengths {2, 4, 8}
  (capped by ``--num-speculative-tokens``), global scope; ``@quota-<bandit>``
  for the batch-quota scope;
* ``@off`` - auto-off on the engine's length; any preset + ``+off`` (e.g.
  ``@ucb+off``) adds auto-off, which presets otherwise leave out;
* ``@custom`` - the JSON object given with ``--policy``.

Each resolves to what the engine needs: a vLLM ``speculative_config`` (+
``additional_config``) or a proposer for the reference runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from specpack.methods import METHODS

ENGINES = ("vllm", "hf")
BUILTINS = {"vllm": ("vllm:ngram", "vllm:draft_model"), "hf": ()}
#: specpack methods per engine: vLLM hosts the rows with a vLLM class, the
#: reference runtime hosts every row
SPECPACK = {"vllm": tuple(f"specpack:{n}" for n, s in METHODS.items() if s.vllm_class),
            "hf": tuple(f"specpack:{n}" for n in METHODS)}
#: methods that need --draft / --datastore
NEEDS_DRAFT = tuple(f"specpack:{n}" for n, s in METHODS.items()
                    if s.needs_draft_model) + ("vllm:draft_model",)
NEEDS_DATASTORE = tuple(f"specpack:{n}" for n, s in METHODS.items() if s.needs_datastore)


PRESETS = ("kN", "svip", "threshold", "cumulative", "ema", "ucb", "exp3", "thompson",
           "quota-ucb", "quota-exp3", "quota-thompson", "off", "custom")


def policy_preset(preset: str, k: int, custom: dict | None = None) -> dict:
    """The ``policy`` section for a preset name (see module docstring)."""
    auto_off = preset.endswith("+off") or preset == "off"
    base = preset.removesuffix("+off")
    if base == "custom":
        if custom is None:
            raise ValueError("preset @custom needs --policy JSON")
        return dict(custom)
    if base == "off":
        return {"kind": "fixed", "auto_off": True}
    if base.startswith("k") and base[1:].isdigit():
        n = int(base[1:])
        if not 1 <= n <= k:
            raise ValueError(f"preset @{base}: length must be 1..{k} (--num-speculative-tokens)")
        return {"kind": "fixed", "num_tokens": n, "auto_off": auto_off}
    kinds = {"svip": "svip", "threshold": "threshold", "cumulative": "cumulative",
             "ema": "acceptance_ema"}
    if base in kinds:
        return {"kind": kinds[base], "auto_off": auto_off}
    scope = "global"
    if base.startswith("quota-"):
        scope, base = "batch_quota", base[len("quota-"):]
    if base in ("ucb", "exp3", "thompson"):
        lengths = sorted({min(n, k) for n in (2, 4, 8)})
        if len(lengths) < 2:
            lengths = [1, k] if k > 1 else [1, 1]
        return {"kind": base, "scope": scope, "auto_off": auto_off,
                "arms": [{"num_tokens": n} for n in lengths]}
    raise ValueError(f"unknown policy preset {preset!r}; allowed: {', '.join(PRESETS)} "
                     "(optionally followed by +off)")


def split_method(name: str) -> tuple[str, str | None]:
    base, _, preset = name.partition("@")
    return base, (preset or None)


@dataclass(frozen=True)
class Method:
    name: str
    builtin: bool

    @property
    def base(self) -> str:
        return split_method(self.name)[0]

    @property
    def preset(self) -> str | None:
        return split_method(self.name)[1]


def allowed(engine: str) -> list[str]:
    return ["none", *BUILTINS[engine], *SPECPACK[engine]]


def parse_methods(text: str, engine: str, draft: str | None,
                  datastore: str | None = None) -> list[Method]:
    """Validate ``--methods``; add ``none`` and the applicable built-ins."""
    if engine not in ENGINES:
        raise ValueError(f"--engine {engine!r}: allowed values: {', '.join(ENGINES)}")
    names = [n.strip() for n in text.split(",") if n.strip()]
    ok = allowed(engine)
    for n in names:
        base, preset = split_method(n)
        if preset is not None and base.startswith("specpack:"):
            policy_preset(preset, 1024, {})  # raises on an unknown preset
            if base in ok:
                continue
        if n not in ok:
            raise ValueError(f"--methods: {n!r} is not available on engine {engine!r}; "
                             f"allowed values: {', '.join(ok)}")
    for n in names:
        if split_method(n)[0] in NEEDS_DRAFT and not draft:
            raise ValueError(f"--methods: {n} needs --draft PATH")
        if split_method(n)[0] in NEEDS_DATASTORE and not datastore:
            raise ValueError(f"--methods: {n} needs --datastore PATH "
                             "(build one with: specpack datastore build)")
    # always measure against the engine alone and its applicable built-ins
    must = ["none"] + [b for b in BUILTINS[engine] if draft or not b.endswith("draft_model")]
    ordered = must + [n for n in names if n not in must]
    return [Method(n, n in BUILTINS[engine])
            for n in ordered]


def specpack_settings(method: Method, draft: str | None, k: int,
                      custom_policy: dict | None = None, datastore: str | None = None) -> dict:
    """specpack's settings (method config + optional policy) for a specpack method.

    From the method's declared needs and config fields: a draft model gets
    ``--draft``, a datastore method ``--datastore``; a method with nested
    ``datastore`` settings (cascade) uses the datastore when one is given; a
    method with a nested ``retrieval`` source (fusion) fuses with that
    cascade.
    """
    spec = METHODS[method.base.removeprefix("specpack:")]
    fields = spec.config.model_fields
    settings: dict = {}
    cascade: dict = {"method": "cascade"}
    if datastore:
        cascade["datastore"] = {"datastore_path": datastore}
    if spec.needs_draft_model:
        settings["draft_model"] = draft
    if spec.needs_datastore:
        settings["datastore_path"] = datastore
    if "datastore" in fields and datastore:
        settings["datastore"] = cascade["datastore"]
    if "retrieval" in fields:
        settings["retrieval"] = cascade
    if method.preset is not None:
        settings["policy"] = policy_preset(method.preset, k, custom_policy)
    return settings


def vllm_configs(method: Method, draft: str | None, k: int,
                 custom_policy: dict | None = None,
                 datastore: str | None = None) -> tuple[dict | None, dict]:
    """(speculative_config, additional_config) for vLLM."""
    if method.name == "none":
        return None, {}
    if method.name == "vllm:ngram":
        return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": 2,
                "prompt_lookup_max": 5}, {}
    if method.name == "vllm:draft_model":
        return {"method": "draft_model", "model": draft, "num_speculative_tokens": min(k, 4)}, {}
    spec = METHODS.get(method.base.removeprefix("specpack:"))
    if method.base.startswith("specpack:") and spec is not None and spec.vllm_class:
        return ({"model": "specpack.vllm_plugins." + spec.vllm_class,
                 "num_speculative_tokens": k},
                {"specpack": specpack_settings(method, draft, k, custom_policy, datastore)})
    raise ValueError(f"method {method.name} cannot run on vLLM")
