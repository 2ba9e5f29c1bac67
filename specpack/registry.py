"""Settings -> proposer, through the method table (:mod:`specpack.methods`).

:func:`validate_pipeline` is the one validation path the CLI
(``specpack check-config``) and the engine plugins (vLLM's argv check,
SGLang's server-args hook) share: it checks, before any engine starts,
everything that can be checked without building the proposer - the JSON
shape, every field and nested config, policy arms against the engine's
draft length, and that the files a method needs (draft model checkpoint,
datastore index) exist. :func:`build_pipeline` builds what it validated.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

from specpack.config import (ConfigError, MethodConfig, PolicyConfig, json_object,
                             nested_configs, nested_method_config, parse_fault_config,
                             parse_method_config, parse_policy_config)
from specpack.methods import build_method, method as method_spec

#: a Hugging Face hub id ("org/name" or "name"): checked only where the hub is off
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_DATASTORE_FILES = ("meta.json", "tokens.npy", "index.npy")


def _split(raw: Any, where: str) -> tuple[dict, Any, Any]:
    """(method settings, policy section, fault_injection section) of a settings object."""
    raw = json_object(raw, where)
    return raw, raw.pop("policy", None), raw.pop("fault_injection", None)


def build_proposer(raw: Mapping[str, Any] | None, *, method: str | None = None,
                   max_nodes: int = 16, where: str = "specpack config"):
    """Validate ``raw`` and build the proposer it names (no policy)."""
    config = parse_method_config(raw, default_method=method, where=where)
    return build_method(config, max_nodes)


def build_pipeline(raw: Mapping[str, Any] | None, *, method: str | None = None,
                   max_nodes: int = 16, where: str = "specpack config",
                   build: Callable[[MethodConfig, int], Any] | None = None):
    """Build the proposer named by ``raw``, wrapped in its ``policy`` if any.

    ``raw`` is a method config plus an optional ``policy`` section
    (:class:`~specpack.config.PolicyConfig`); both are validated before
    anything is built. ``build(config, max_nodes)`` overrides the table's
    factories (e.g. to reuse a loaded draft model).
    """
    raw, policy_raw, faults_raw = _split(raw, where)
    config = parse_method_config(raw, default_method=method, where=where)
    policy = parse_policy_config(policy_raw, default_method=config.method,
                                 where=f"{where}: policy")
    faults = parse_fault_config(faults_raw, f"{where}: fault_injection")
    build = build or build_method
    if faults is not None:
        from specpack.testing.faults import FaultInjector

        inner = build
        build = lambda mc, n: FaultInjector(inner(mc, n), faults, max_nodes=n)  # noqa: E731
    if policy is None:
        return build(config, max_nodes)
    from specpack.proposers.policy.policy_proposer import PolicyProposer

    return PolicyProposer(policy, config, max_nodes=max_nodes, build=build,
                          where=f"{where}: policy")


def check_policy(policy: PolicyConfig, config: MethodConfig, max_nodes: int | None,
                 where: str) -> None:
    """Policy checks that need the method: SVIP needs draft distributions;
    lengths fit the engine's number of speculative tokens."""
    if policy.kind == "svip" and not method_spec(config.method).draft_distributions:
        from specpack.methods import METHODS

        with_q = ", ".join(n for n, s in METHODS.items() if s.draft_distributions)
        raise ConfigError(f"{where}: policy kind 'svip' needs a drafter with draft "
                          f"distributions ({with_q}); method {config.method!r} has none - use "
                          "'acceptance_ema', 'cumulative' or a bandit")
    if max_nodes is None:
        return
    for i, arm in enumerate(policy.arms):
        if arm.num_tokens > max_nodes:
            raise ConfigError(f"{where}: arms[{i}].num_tokens = {arm.num_tokens} "
                              f"exceeds the engine's number of speculative tokens "
                              f"({max_nodes}); allowed: 1..{max_nodes}")
    if policy.num_tokens is not None and policy.num_tokens > max_nodes:
        raise ConfigError(f"{where}: field 'num_tokens' = {policy.num_tokens} "
                          f"exceeds the engine's number of speculative tokens ({max_nodes}); "
                          f"allowed: 1..{max_nodes}")


def check_files(config: MethodConfig, where: str) -> None:
    """The checkpoint and index directories ``config`` (and its nested
    configs) name exist and look like what they should be."""
    path = getattr(config, "draft_model", None)
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    p = os.path.expanduser(path) if isinstance(path, str) else None
    if p is not None and not os.path.exists(p) and (offline or not _HUB_ID.fullmatch(path)):
        raise ConfigError(f"{where}: field 'draft_model' = {path!r}: no such directory "
                          "(allowed: a transformers checkpoint directory"
                          + (")" if offline else ", or a hub id 'org/name')"))
    if p is not None and os.path.exists(p):
        if not os.path.isdir(p):
            raise ConfigError(f"{where}: field 'draft_model' = {path!r}: not a directory "
                              "(allowed: a transformers checkpoint directory)")
        if not os.path.isfile(os.path.join(p, "config.json")):
            raise ConfigError(f"{where}: field 'draft_model' = {path!r}: the directory has no "
                              "config.json (allowed: a transformers checkpoint directory)")
    path = getattr(config, "datastore_path", None)
    if isinstance(path, str):
        missing = [f for f in _DATASTORE_FILES
                   if not os.path.isfile(os.path.join(os.path.expanduser(path), f))]
        if missing:
            raise ConfigError(f"{where}: field 'datastore_path' = {path!r}: not a datastore "
                              f"(missing {', '.join(missing)}); build one with "
                              "'specpack datastore build --tokenizer MODEL --input FILES "
                              "--out DIR'")
    for field, sub in nested_configs(config):
        if sub is not None:
            check_files(nested_method_config(config, field, where), f"{where}: {field}")


def validate_pipeline(raw: Mapping[str, Any] | None, *, method: str | None = None,
                      max_nodes: int | None = None, where: str = "specpack config",
                      check_paths: bool = True) -> MethodConfig:
    """Validate what :func:`build_pipeline` would build, without building it;
    return the method config."""
    raw, policy_raw, faults_raw = _split(raw, where)
    config = parse_method_config(raw, default_method=method, where=where)
    policy = parse_policy_config(policy_raw, default_method=config.method,
                                 where=f"{where}: policy")
    parse_fault_config(faults_raw, f"{where}: fault_injection")
    if policy is not None:
        check_policy(policy, config, max_nodes, f"{where}: policy")
    if check_paths:  # after the fields: a typo is reported before a missing file
        check_files(config, where)
        for i, arm in enumerate(policy.arms if policy is not None else []):
            if arm.proposer is not None:
                check_files(parse_method_config(arm.proposer, where=f"{where}: policy"),
                            f"{where}: policy: arms[{i}].proposer")
    return config
