"""Method registry: name -> proposer factory (config validated first)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from specpack.config import METHOD_CONFIGS, MethodConfig, parse_method_config


def _suffix(config: MethodConfig, max_nodes: int):
    from specpack.proposers.suffix import SuffixProposer

    return SuffixProposer(config, max_nodes=max_nodes)  # type: ignore[arg-type]


def _draft_model(config: MethodConfig, max_nodes: int):
    from specpack.proposers.draft_model import DraftModelProposer

    return DraftModelProposer.from_config(config, max_nodes=max_nodes)  # type: ignore[arg-type]


def _datastore(config: MethodConfig, max_nodes: int):
    from specpack.proposers.retrieval import DatastoreProposer

    return DatastoreProposer(config, max_nodes=max_nodes)  # type: ignore[arg-type]


def _token_recycling(config: MethodConfig, max_nodes: int):
    from specpack.proposers.token_recycling import TokenRecyclingProposer

    return TokenRecyclingProposer(config, max_nodes=max_nodes)  # type: ignore[arg-type]


def _cascade(config: MethodConfig, max_nodes: int):
    from specpack.proposers.retrieval import CascadeProposer

    return CascadeProposer(config, max_nodes=max_nodes)  # type: ignore[arg-type]


def _rasd(config: MethodConfig, max_nodes: int):
    from specpack.proposers.retrieval import FusionProposer

    return FusionProposer(config, max_nodes=max_nodes)  # type: ignore[arg-type]


FACTORIES: dict[str, Callable[[MethodConfig, int], Any]] = {
    "suffix": _suffix, "draft_model": _draft_model, "datastore": _datastore,
    "token_recycling": _token_recycling, "cascade": _cascade, "rasd": _rasd}
assert FACTORIES.keys() == METHOD_CONFIGS.keys()


def build_proposer(raw: Mapping[str, Any] | None, *, method: str | None = None,
                   max_nodes: int = 16, where: str = "specpack config"):
    """Validate ``raw`` and build the proposer it names."""
    config = parse_method_config(raw, default_method=method, where=where)
    return FACTORIES[config.method](config, max_nodes)


def build_pipeline(raw: Mapping[str, Any] | None, *, method: str | None = None,
                   max_nodes: int = 16, where: str = "specpack config",
                   build: Callable[[MethodConfig, int], Any] | None = None):
    """Build the proposer named by ``raw``, wrapped in its ``policy`` if any.

    ``raw`` is a method config plus an optional ``policy`` section
    (:class:`~specpack.config.PolicyConfig`); both are validated before
    anything is built. ``build(config, max_nodes)`` overrides the factories
    (e.g. to reuse a loaded draft model).
    """
    from specpack.config import parse_policy_config

    raw = dict(raw or {})
    policy_raw = raw.pop("policy", None)
    config = parse_method_config(raw, default_method=method, where=where)
    policy = parse_policy_config(policy_raw, default_method=config.method,
                                 where=f"{where}: policy")
    build = build or (lambda mc, n: FACTORIES[mc.method](mc, n))
    if policy is None:
        return build(config, max_nodes)
    from specpack.proposers.policy import PolicyProposer

    return PolicyProposer(policy, config, max_nodes=max_nodes, build=build,
                          where=f"{where}: policy")


def validate_pipeline(raw: Mapping[str, Any] | None, *, method: str | None = None,
                      max_nodes: int | None = None, where: str = "specpack config") -> None:
    """Validate what :func:`build_pipeline` would build, without building it."""
    from specpack.config import ConfigError, parse_policy_config

    raw = dict(raw or {})
    policy_raw = raw.pop("policy", None)
    config = parse_method_config(raw, default_method=method, where=where)
    policy = parse_policy_config(policy_raw, default_method=config.method, where=f"{where}: policy")
    if policy is None:
        return
    if policy.kind == "svip" and config.method not in ("draft_model", "rasd"):
        raise ConfigError(f"{where}: policy: policy kind 'svip' needs a drafter with draft "
                          f"distributions (draft_model); method {config.method!r} has none - use "
                          "'acceptance_ema', 'cumulative' or a bandit")
    if max_nodes is not None:
        for i, arm in enumerate(policy.arms):
            if arm.num_tokens > max_nodes:
                raise ConfigError(f"{where}: policy: arms[{i}].num_tokens = {arm.num_tokens} "
                                  f"exceeds the engine's number of speculative tokens "
                                  f"({max_nodes}); allowed: 1..{max_nodes}")
        if policy.num_tokens is not None and policy.num_tokens > max_nodes:
            raise ConfigError(f"{where}: policy: field 'num_tokens' = {policy.num_tokens} "
                              f"exceeds the engine's number of speculative tokens ({max_nodes}); "
                              f"allowed: 1..{max_nodes}")
