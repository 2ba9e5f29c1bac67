"""The method table: every specpack method, declared once.

Each :class:`MethodSpec` row names a method, its family, its config class,
its proposer class (imported lazily: engine plugin entry points read this
table in every engine process and must stay light), the names engines know
it by, and the capabilities it declares. Everything else is derived from
this table: config dispatch (:func:`specpack.config.parse_method_config`),
factories (:func:`build_method`), the vLLM classes and exports
(``specpack.vllm_plugins``), SGLang's algorithm names, the policy layer's
checks, ``specpack bench`` methods, ``specpack methods`` and the CLI's
choices.

Rows are checked when they are registered (:func:`register`), in the spirit
of SGLang's conformance check at algorithm registration: a row whose config
does not name the method, whose capabilities contradict its config, or
whose engine names clash is refused with a message naming the row and the
field. ``tests/test_methods.py`` goes further for every row: imports the
proposer class, builds it from its config, builds its vLLM class and runs
it through ``specpack generate``.

Adding a method = a config class (``specpack/config.py``), a proposer class
(``proposers/<family>/``), one row here, its tests and its docs page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from specpack.config import (CascadeConfig, DatastoreConfig, DraftModelConfig, FusionConfig,
                             MethodConfig, SuffixConfig, TokenRecyclingConfig)

#: method families (``proposers/<family>/``)
FAMILIES = ("retrieval", "model", "fusion", "self_spec")


@dataclass(frozen=True)
class MethodSpec:
    """One method: its names, config, proposer and declared capabilities."""

    name: str                       #: ``"method"`` in settings
    family: str                     #: one of :data:`FAMILIES`
    config: type[MethodConfig]      #: validated settings
    proposer: str                   #: ``"module:Class"``, a :class:`~specpack.protocols.Proposer`
    summary: str                    #: one line, with the paper
    vllm_class: str | None = None   #: ``specpack.vllm_plugins.<vllm_class>`` (custom_class)
    sglang_algorithm: str | None = None  #: ``--speculative-algorithm`` name; None: not hostable
    #: drafts carry the drafter's distributions (stop rules applied while drafting,
    #: SVIP/confidence allowed, exact sampling)
    draft_distributions: bool = False
    needs_draft_model: bool = False     #: config field ``draft_model`` (a checkpoint)
    needs_datastore: bool = False       #: config field ``datastore_path`` (a corpus index)
    needs_target: bool = False          #: drafts on the target model (``attach_target``)

    def proposer_class(self) -> type:
        module, _, attr = self.proposer.partition(":")
        return getattr(import_module(module), attr)

    def build(self, config: MethodConfig, max_nodes: int, draft_lm: Any = None) -> Any:
        """The proposer for a validated ``config`` of this method;
        ``draft_lm``: an already loaded draft model for methods that need one."""
        if not isinstance(config, self.config):
            raise TypeError(f"method {self.name!r} needs a {self.config.__name__}, "
                            f"got {type(config).__name__}")
        cls = self.proposer_class()
        if draft_lm is not None and self.needs_draft_model:
            return cls.from_config(config, max_nodes=max_nodes, draft_lm=draft_lm)
        return cls.from_config(config, max_nodes=max_nodes)


METHODS: dict[str, MethodSpec] = {}


def _refuse(spec: MethodSpec, field: str, why: str) -> None:
    raise ValueError(f"method table row {spec.name!r}: field '{field}' {why}")


def register(spec: MethodSpec) -> MethodSpec:
    """Add a row after checking it against the rest of the table."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", spec.name):
        _refuse(spec, "name", "must be lower_snake_case")
    if spec.name in METHODS:
        _refuse(spec, "name", "is registered twice")
    if spec.family not in FAMILIES:
        _refuse(spec, "family", f"= {spec.family!r}; allowed: {', '.join(FAMILIES)}")
    if not (isinstance(spec.config, type) and issubclass(spec.config, MethodConfig)):
        _refuse(spec, "config", "must be a MethodConfig subclass")
    default = spec.config.model_fields["method"].default
    if default != spec.name:
        _refuse(spec, "config", f"{spec.config.__name__}.method defaults to {default!r}, "
                f"not {spec.name!r}")
    if not re.fullmatch(rf"specpack\.proposers\.{spec.family}\.[a-z0-9_.]+:[A-Z]\w*",
                        spec.proposer):
        _refuse(spec, "proposer", f"= {spec.proposer!r}; expected "
                f"'specpack.proposers.{spec.family}.<module>:<Class>'")
    if not spec.summary:
        _refuse(spec, "summary", "is empty")
    fields = spec.config.model_fields
    for flag, field in (("needs_draft_model", "draft_model"),
                        ("needs_datastore", "datastore_path")):
        if getattr(spec, flag) != (field in fields):
            _refuse(spec, flag, f"= {getattr(spec, flag)} but {spec.config.__name__} "
                    f"{'has' if field in fields else 'has no'} field '{field}'")
    if spec.vllm_class is not None:
        if not re.fullmatch(r"[A-Z]\w*", spec.vllm_class):
            _refuse(spec, "vllm_class", "must be a class name (CamelCase)")
        if any(s.vllm_class == spec.vllm_class for s in METHODS.values()):
            _refuse(spec, "vllm_class", f"{spec.vllm_class!r} is taken")
    if spec.sglang_algorithm is not None:
        if not re.fullmatch(r"SPECPACK_[A-Z0-9_]+", spec.sglang_algorithm):
            _refuse(spec, "sglang_algorithm", "must match SPECPACK_[A-Z0-9_]+")
        if any(s.sglang_algorithm == spec.sglang_algorithm for s in METHODS.values()):
            _refuse(spec, "sglang_algorithm", f"{spec.sglang_algorithm!r} is taken")
        if spec.needs_draft_model or spec.needs_target:
            _refuse(spec, "sglang_algorithm", "must be None: specpack hosts only model-free "
                    "methods on SGLang's NGRAM verify path")
    METHODS[spec.name] = spec
    return spec


register(MethodSpec(
    "suffix", "retrieval", SuffixConfig, "specpack.proposers.retrieval.suffix:SuffixProposer",
    "SuffixDecoding: per-request + global suffix tries, tree drafts (arXiv:2411.04975)",
    vllm_class="SuffixDecoding", sglang_algorithm="SPECPACK_SUFFIX"))
register(MethodSpec(
    "datastore", "retrieval", DatastoreConfig,
    "specpack.proposers.retrieval.datastore:DatastoreProposer",
    "REST corpus datastore, memory-mapped suffix index (arXiv:2311.08252)",
    vllm_class="CorpusDatastore", sglang_algorithm="SPECPACK_DATASTORE", needs_datastore=True))
register(MethodSpec(
    "token_recycling", "retrieval", TokenRecyclingConfig,
    "specpack.proposers.retrieval.token_recycling:TokenRecyclingProposer",
    "Token Recycling: top-k successor table + static tree template (arXiv:2408.08696)",
    vllm_class="TokenRecycling", sglang_algorithm="SPECPACK_TOKEN_RECYCLING"))
register(MethodSpec(
    "cascade", "retrieval", CascadeConfig, "specpack.proposers.retrieval.cascade:CascadeProposer",
    "hierarchical retrieval cascade: request trie, global trie, datastore, Token Recycling",
    vllm_class="RetrievalCascade", sglang_algorithm="SPECPACK_CASCADE"))
register(MethodSpec(
    "draft_model", "model", DraftModelConfig,
    "specpack.proposers.model.draft_model:DraftModelProposer",
    "small draft LM, chain or top-k tree, exact sampling (Leviathan et al. 2023)",
    vllm_class="DraftModel", draft_distributions=True, needs_draft_model=True))
register(MethodSpec(
    "rasd", "fusion", FusionConfig, "specpack.proposers.fusion.rasd:FusionProposer",
    "RASD: draft-model tree fused with a pruned retrieval tree (arXiv:2503.03434)",
    vllm_class="RASD", draft_distributions=True, needs_draft_model=True))


def method(name: str) -> MethodSpec:
    """The row of ``name`` (KeyError names the allowed values)."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a specpack method; allowed: "
                       f"{', '.join(METHODS)}") from None


def build_method(config: MethodConfig, max_nodes: int, draft_lm: Any = None) -> Any:
    """Build the proposer of a validated method config."""
    return method(config.method).build(config, max_nodes, draft_lm)


def loaded_draft_builder(draft_lm: Any, path: str | None = None):
    """A ``build(config, max_nodes)`` for :func:`specpack.registry.build_pipeline`
    that drafts with the already loaded ``draft_lm`` wherever a config needs
    a draft model (only those naming ``path``, when given), so a benchmark
    or a test loads it once."""
    def build(config: MethodConfig, max_nodes: int) -> Any:
        reuse = method(config.method).needs_draft_model and (
            path is None or getattr(config, "draft_model", None) == path)
        return build_method(config, max_nodes, draft_lm if reuse else None)
    return build


def family_methods(family: str) -> tuple[str, ...]:
    return tuple(n for n, s in METHODS.items() if s.family == family)


def vllm_classes() -> dict[str, str]:
    """vLLM class name -> method."""
    return {s.vllm_class: n for n, s in METHODS.items() if s.vllm_class}


def sglang_algorithms() -> dict[str, str]:
    """SGLang ``--speculative-algorithm`` name -> method."""
    return {s.sglang_algorithm: n for n, s in METHODS.items() if s.sglang_algorithm}
