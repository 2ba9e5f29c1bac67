"""Validated settings for every specpack method (pydantic v2).

Users write one JSON object per engine, for example in vLLM::

    --additional-config '{"specpack": {"method": "suffix",
                                        "suffix_decoding_min_token_prob": 0.2}}'

:func:`parse_method_config` turns it into the method's config model or raises
:class:`ConfigError`, whose message names the offending field and what is
allowed, before any engine work starts. Knob names follow vLLM's upstream
methods where they mean the same thing.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A specpack setting is invalid; the message says which and why."""


def json_object(value: Any, flag: str) -> dict:
    """``value`` (a JSON string, a mapping or None) as a dict, or a
    :class:`ConfigError` naming ``flag``: the one parser of every JSON-object
    flag, settings file and section."""
    if value is None:
        return {}
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{flag} is not valid JSON: {e}") from None
    if not isinstance(value, Mapping):
        raise ConfigError(f"{flag} must be a JSON object, got {type(value).__name__}")
    return dict(value)


class MethodConfig(BaseModel):
    """Base for method configs: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    method: str
    max_active_requests: int = Field(
        4096,
        ge=1,
        description="Cap on per-request proposer states kept at once (suffix tries, "
        "draft KV caches, ...; composite methods pass it to their sources); the least "
        "recently used state is evicted beyond it and rebuilt from the context if the "
        "request comes back.",
    )


class SuffixConfig(MethodConfig):
    """SuffixDecoding (Oliaro et al., 2024, arXiv:2411.04975).

    A per-request suffix trie over prompt + output and a global trie over the
    outputs of finished requests; continuation probability of a child is
    ``count(child) / sum(count(siblings))`` and a draft node's score is the
    product of those ratios along its path.
    """

    method: Literal["suffix"] = "suffix"
    suffix_decoding_max_tree_depth: int = Field(
        24, ge=2, le=512, description="Depth of both tries: pattern + continuation length "
        "(>= 2: one pattern token plus one drafted token)."
    )
    suffix_decoding_max_cached_requests: int = Field(
        10000,
        ge=0,
        description="Finished requests whose outputs stay in the global trie "
        "(oldest evicted first); 0 disables the global trie.",
    )
    suffix_decoding_max_cached_tokens: int = Field(
        1_000_000,
        ge=1,
        description="specpack extension: cap on tokens held by the global trie "
        "(oldest outputs evicted first), which bounds its memory to about "
        "40 bytes x depth per cached token in the worst case.",
    )
    suffix_decoding_max_spec_factor: float = Field(
        1.0,
        ge=0.0,
        le=1000.0,
        description="Draft at most max_spec_factor x match_length tokens.",
    )
    suffix_decoding_min_token_prob: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Stop a branch when its path probability falls below this.",
    )
    suffix_decoding_max_tree_nodes: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Node budget of the draft tree (default: the engine's number of "
        "speculative tokens). Chain-only engines receive the best path.",
    )


class DraftModelConfig(MethodConfig):
    """A small causal LM drafts for the target (Leviathan et al., 2023; Chen
    et al., 2023); ``tree`` mode expands the ``tree_width`` most likely (greedy)
    or ``tree_width`` sampled (temperature > 0) children per node, keeping the
    nodes with the highest path probability prod q (SpecInfer-style top-k
    tree)."""

    method: Literal["draft_model"] = "draft_model"
    draft_model: str = Field(..., min_length=1, description="Path of a transformers causal LM "
                             "sharing the target's tokenizer.")
    mode: Literal["chain", "tree"] = Field("chain", description="Draft a chain or a tree.")
    tree_width: int = Field(4, ge=1, le=64, description="Children per expanded node (tree mode).")
    max_expand: int = Field(8, ge=1, le=256, description="Nodes expanded per tree level.")
    seed: int = Field(0, description="Seed of the drafter's sampling.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
                        description="Device of the drafter and its KV pool: auto (the "
                        "target's device), cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Drafter dtype: auto = the target's on GPUs, float32 on CPU.")
    kv_budget_tokens: int = Field(131072, ge=64, le=1 << 26, description="Token capacity "
                                  "of the drafter's paged KV pool (memory bound; idle "
                                  "requests are evicted least recently used first).")
    page_size: int = Field(16, ge=1, le=1024, description="Tokens per KV page.")


class DatastoreConfig(MethodConfig):
    """REST (He et al., 2024, arXiv:2311.08252): drafts from a tokenized corpus.

    The longest context suffix (``max_match`` down to ``min_match`` tokens)
    found in the corpus index selects up to ``max_matches`` occurrences; the
    ``continuation_length`` tokens after each are merged into a prefix trie
    and the ``max_tree_nodes`` most frequent prefixes form the draft tree
    (probability = prefix count / matches).
    """

    method: Literal["datastore"] = "datastore"
    datastore_path: str = Field(..., min_length=1, description="Directory written by "
                                "'specpack datastore build' (same tokenizer as the engine).")
    max_match: int = Field(16, ge=1, le=64, description="Longest context suffix looked up "
                           "(capped by the index's sort depth).")
    min_match: int = Field(2, ge=1, le=64, description="Shortest context suffix looked up.")
    max_matches: int = Field(64, ge=1, le=4096, description="Occurrences read per lookup.")
    continuation_length: int = Field(10, ge=1, le=128, description="Tokens read after each "
                                     "occurrence.")
    max_tree_nodes: int = Field(64, ge=1, le=1024, description="Node budget of the draft tree "
                                "(also capped by the engine's budget).")

    def model_post_init(self, __context) -> None:
        if self.min_match > self.max_match:
            raise ValueError(f"min_match ({self.min_match}) must be <= max_match "
                             f"({self.max_match})")


class TokenRecyclingConfig(MethodConfig):
    """Token Recycling (Luo et al., 2024, arXiv:2408.08696): a table of the
    ``top_k`` most recent successor candidates of every token, drafted by
    breadth-first expansion over a fixed tree template of
    ``template_nodes`` nodes."""

    method: Literal["token_recycling"] = "token_recycling"
    top_k: int = Field(8, ge=1, le=64, description="Successor candidates kept per token.")
    template_nodes: int = Field(80, ge=1, le=1024, description="Nodes of the static draft tree "
                                "template (also capped by the engine's budget).")
    template_depth: int = Field(8, ge=1, le=64, description="Depth of the template.")
    vocab_size: int = Field(1 << 18, ge=2, le=1 << 22, description="Cap on token ids the table "
                            "covers (it grows to the largest id seen; memory = ids x top_k x 4 B).")
    table_path: str | None = Field(None, description="A table saved with save(): loaded at "
                                   "start when the file exists.")


RETRIEVAL_SOURCES = ("request", "global", "datastore", "token_recycling")


class CascadeConfig(MethodConfig):
    """Hierarchical retrieval cascade: this request's suffix trie, then the
    global trie of recent outputs, then the corpus datastore, then Token
    Recycling. ``mode='first'`` stops at the first source whose draft has
    expected accepted tokens (sum of node probabilities) >= ``min_score``;
    ``mode='merge'`` merges every source's tree by prefix under the budget."""

    method: Literal["cascade"] = "cascade"
    sources: list[Literal["request", "global", "datastore", "token_recycling"]] | None = Field(
        None, min_length=1, description="Sources in the order asked (default: request, global, "
        "datastore when 'datastore' is set, token_recycling); 'datastore' needs 'datastore'.")
    mode: Literal["first", "merge"] = Field("first", description="first | merge")
    min_score: float = Field(1.0, ge=0.0, le=1024.0, description="'first': accept a source's "
                             "draft when its expected accepted tokens reach this.")
    suffix: dict = Field(default_factory=dict, description="SuffixDecoding settings of the "
                         "request/global sources.")
    datastore: dict | None = Field(None, description="Datastore settings (incl. datastore_path).")
    token_recycling: dict = Field(default_factory=dict, description="Token Recycling settings.")

    @property
    def resolved_sources(self) -> list[str]:
        if self.sources is not None:
            return list(self.sources)
        return [s for s in RETRIEVAL_SOURCES if s != "datastore" or self.datastore is not None]

    def model_post_init(self, __context) -> None:
        if self.sources is None:
            return
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"'sources' lists a source twice: {self.sources}")
        if "datastore" in self.sources and self.datastore is None:
            raise ValueError("'sources' includes 'datastore' but no 'datastore' settings "
                             "(with datastore_path) were given; drop it from 'sources' or add "
                             "'datastore': {\"datastore_path\": ...}")


class FusionConfig(DraftModelConfig):
    """RASD-style fusion (Quan et al., 2025, arXiv:2503.03434): a draft-model
    tree plus a retrieval tree. Retrieval branches whose first token has
    draft-model probability below ``prune_threshold`` are dropped; the rest
    are merged with the model tree by longest-prefix matching and the
    ``max`` of the two path probabilities; the best nodes fill the budget."""

    method: Literal["rasd"] = "rasd"  # type: ignore[assignment]
    retrieval: dict = Field(default_factory=lambda: {"method": "suffix"}, description="Method "
                            "config of the retrieval source (suffix, datastore, token_recycling, "
                            "cascade).")
    prune_threshold: float = Field(0.05, ge=0.0, le=1.0, description="Drop retrieval branches "
                                   "whose first token has draft probability below this.")


class ArmConfig(BaseModel):
    """One bandit arm: a proposer configuration and a draft budget."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    proposer: dict | None = Field(
        None, description="Method config of the arm's proposer (same schema as the "
        "method's own settings, incl. 'method'); default: the entry point's proposer.")
    num_tokens: int = Field(..., ge=1, le=1024, description="Draft length / node budget of the arm.")


POLICY_KINDS = ("fixed", "svip", "threshold", "cumulative", "acceptance_ema",
                "ucb", "exp3", "thompson")
BANDIT_KINDS = ("ucb", "exp3", "thompson")


class PolicyConfig(BaseModel):
    """How much to speculate per request and step (see ``specpack.proposers.policy.policy_proposer``).

    ``kind``: ``fixed`` (a constant length), ``svip`` / ``threshold`` /
    ``cumulative`` (stopping rules, per position), ``acceptance_ema``
    (budget from each request's recent accepted length), or a bandit over
    ``arms`` (``ucb``, ``exp3``, ``thompson``). ``auto_off`` adds the
    batch-aware cost model on top of any kind.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    kind: Literal["fixed", "svip", "threshold", "cumulative", "acceptance_ema",
                  "ucb", "exp3", "thompson"] = Field(
        "fixed", description="fixed | svip | threshold | cumulative | acceptance_ema | ucb | "
        "exp3 | thompson")
    num_tokens: int | None = Field(None, ge=1, le=1024, description="Length of 'fixed' "
                                   "(default: the engine's number of speculative tokens).")
    max_length: int = Field(40, ge=1, le=1024, description="Longest draft of the adaptive kinds "
                            "(also capped by the engine's number of speculative tokens).")
    svip_gamma: float = Field(0.15, gt=0.0, le=100.0, description="SVIP: stop when "
                              "sqrt(svip_gamma * entropy) > svip_h.")
    svip_h: float = Field(0.3, gt=0.0, le=100.0, description="SVIP threshold h.")
    threshold: float = Field(0.4, ge=0.0, le=1.0, description="'threshold': stop when the "
                             "draft's top-1 probability < threshold.")
    cumulative_threshold: float = Field(0.6, ge=0.0, le=1.0, description="'cumulative': stop "
                                        "when 1 - prod(p_i) > cumulative_threshold.")
    ema_decay: float = Field(0.7, ge=0.0, lt=1.0, description="'acceptance_ema': weight of "
                             "the previous average accepted length.")
    arms: list[ArmConfig] = Field(default_factory=list, description="Bandit arms (>= 2).")
    scope: Literal["request", "global", "batch_quota"] = Field(
        "global", description="Bandit scope: one bandit per request, one shared by all "
        "requests, or one per step for the whole batch with the cost model choosing "
        "which requests speculate (batch_quota).")
    ucb_c: float = Field(0.5, ge=0.0, le=100.0, description="UCB exploration weight.")
    exp3_gamma: float = Field(0.1, gt=0.0, le=1.0, description="EXP3 exploration share.")
    exp3_forget: float = Field(0.995, gt=0.0, le=1.0, description="EXP3 weight discount per update.")
    auto_off: bool = Field(True, description="Batch-aware cost model: draft only the tokens "
                           "whose expected acceptance pays for their verification cost.")
    explore: float = Field(0.05, ge=0.0, le=1.0, description="Share of steps in which one "
                           "request keeps its whole draft despite auto_off, so the step-cost "
                           "fit and the acceptance calibration keep seeing long drafts.")
    seed: int = Field(0, description="Seed of the bandits' randomness.")
    max_tracked_requests: int = Field(4096, ge=1, description="Cap on per-request policy "
                                      "states, least recently used evicted (the method's "
                                      "max_active_requests caps them too).")

    def model_post_init(self, __context) -> None:
        if self.kind in BANDIT_KINDS and len(self.arms) < 2:
            raise ValueError(f"policy kind {self.kind!r} needs 'arms' with at least 2 entries")
        if self.kind not in BANDIT_KINDS and self.arms:
            raise ValueError(f"'arms' only applies to the bandit kinds "
                             f"({', '.join(BANDIT_KINDS)}), not {self.kind!r}")


class FaultInjectionConfig(BaseModel):
    """Faults injected around any method, for tests and soak runs only
    (``"fault_injection": {...}`` next to ``"policy"`` in the specpack
    settings). Each rate is a probability per request per step."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    raise_rate: float = Field(0.0, ge=0.0, le=1.0, description="Raise from propose for a "
                              "request (the whole batched call raises).")
    malformed_rate: float = Field(0.0, ge=0.0, le=1.0, description="Return a malformed draft "
                                  "for a request (ids outside the vocabulary, negative ids, "
                                  "longer than the budget, float dtype, not a Draft).")
    stall_rate: float = Field(0.0, ge=0.0, le=1.0, description="Sleep stall_s in propose.")
    stall_s: float = Field(0.0, ge=0.0, le=60.0, description="Length of one stall (s).")
    hook_raise_rate: float = Field(0.0, ge=0.0, le=1.0, description="Raise from observe / "
                                   "release / observe_step calls.")
    seed: int = Field(0, description="Seed of the injection.")


def validate_model(model: type[BaseModel], raw: Mapping[str, Any], where: str):
    """``model.model_validate(raw)``, or a :class:`ConfigError` naming the field."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, where)) from None


def parse_fault_config(raw: Any, where: str) -> FaultInjectionConfig | None:
    if raw is None:
        return None
    return validate_model(FaultInjectionConfig, json_object(raw, where), where)


def parse_policy_config(raw: Mapping[str, Any] | None, *, default_method: str,
                        where: str = "specpack policy") -> PolicyConfig | None:
    """Validate a ``policy`` section (None = no policy) and every arm's proposer."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    cfg = validate_model(PolicyConfig, raw, where)
    for i, arm in enumerate(cfg.arms):
        if arm.proposer is not None:
            parse_method_config(arm.proposer, where=f"{where}: arms[{i}].proposer")
    return cfg


def _describe_allowed(model: type[BaseModel], field: str) -> str:
    info = model.model_fields.get(field)
    if info is None:
        return ""
    ann = info.annotation
    type_name = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
    if type_name == "Literal":
        return ""
    bounds = []
    for m in info.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None:
                bounds.append(f"{sym} {v}")
    text = type_name + (" " + " and ".join(bounds) if bounds else "")
    return f"allowed: {text}"


def format_validation_error(
    err: ValidationError, model: type[BaseModel], where: str
) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(model.model_fields))
            lines.append(f"{where}: unknown field '{field}'; allowed fields: {allowed}")
            continue
        if not e["loc"]:
            lines.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
            continue
        got = e.get("input")
        allowed = _describe_allowed(model, str(e["loc"][0])) if e["loc"] else ""
        lines.append(
            f"{where}: field '{field}' = {got!r}: {e['msg']}"
            + (f" ({allowed})" if allowed else "")
        )
    return "\n".join(lines)


def parse_method_config(
    raw: Mapping[str, Any] | None,
    *,
    default_method: str | None = None,
    where: str = "specpack config",
) -> MethodConfig:
    """Validate ``raw`` into the config model of its method.

    ``default_method`` is the method implied by the engine entry point (e.g. the
    vLLM class named in ``--speculative-config``); a different ``method`` in
    ``raw`` is an error.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    from specpack.methods import METHODS

    raw = dict(raw)
    method = raw.get("method", default_method)
    allowed = ", ".join(sorted(METHODS))
    if method is not None and not isinstance(method, str):
        raise ConfigError(f"{where}: field 'method' = {method!r} must be a string; "
                          f"allowed values: {allowed}")
    if method is None:
        raise ConfigError(f"{where}: field 'method' is required; allowed values: {allowed}")
    if method not in METHODS:
        raise ConfigError(
            f"{where}: field 'method' = {method!r} is not a specpack method; "
            f"allowed values: {allowed}"
        )
    if default_method is not None and method != default_method:
        raise ConfigError(
            f"{where}: field 'method' = {method!r} conflicts with the entry point, "
            f"which runs {default_method!r}; drop 'method' or use the matching entry point"
        )
    raw["method"] = method
    model = METHODS[method].config
    cfg = validate_model(model, raw, where)
    for field, sub in nested_configs(cfg):
        if sub is not None:
            nested_method_config(cfg, field, where)
    return cfg


def nested_configs(cfg: MethodConfig) -> list[tuple[str, Any]]:
    """(field, raw settings) of the sub-proposers a composite method builds."""
    if isinstance(cfg, CascadeConfig):
        return [("suffix", cfg.suffix), ("datastore", cfg.datastore),
                ("token_recycling", cfg.token_recycling)]
    if isinstance(cfg, FusionConfig):
        return [("retrieval", cfg.retrieval)]
    return []


def nested_method_config(cfg: MethodConfig, field: str, where: str) -> MethodConfig:
    """Validate one sub-proposer's settings of a composite method.

    The composite's ``max_active_requests`` caps its sub-proposers too,
    unless their own settings set one."""
    raw = dict(getattr(cfg, field) or {})
    raw.setdefault("max_active_requests", cfg.max_active_requests)
    sub_where = f"{where}: {field}"
    if isinstance(cfg, CascadeConfig):
        method = {"suffix": "suffix", "datastore": "datastore",
                  "token_recycling": "token_recycling"}[field]
        return parse_method_config(raw, default_method=method, where=sub_where)
    from specpack.methods import family_methods

    method = raw.get("method")
    retrieval = family_methods("retrieval")
    if method not in retrieval:
        raise ConfigError(f"{sub_where}: field 'method' = {method!r}: allowed values: "
                          f"{', '.join(retrieval)}")
    return parse_method_config(raw, where=sub_where)
