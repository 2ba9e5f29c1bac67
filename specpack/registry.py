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


FACTORIES: dict[str, Callable[[MethodConfig, int], Any]] = {"suffix": _suffix,
                                                            "draft_model": _draft_model}
assert FACTORIES.keys() == METHOD_CONFIGS.keys()


def build_proposer(raw: Mapping[str, Any] | None, *, method: str | None = None,
                   max_nodes: int = 16, where: str = "specpack config"):
    """Validate ``raw`` and build the proposer it names."""
    config = parse_method_config(raw, default_method=method, where=where)
    return FACTORIES[config.method](config, max_nodes)
