"""Bench workloads: JSONL, one ``{"category", "prompt", "max_new_tokens"}`` per line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specpack.config import ConfigError, json_object

BUILTIN_DIR = Path(__file__).resolve().parent / "workloads"


@dataclass(frozen=True)
class Request:
    category: str
    prompt: str
    max_new_tokens: int


class WorkloadError(ValueError):
    pass


def load_workload(path: str | Path) -> list[Request]:
    """Read a JSONL workload; extra keys are ignored, bad lines name the field."""
    path = Path(path)
    if not path.exists():
        raise WorkloadError(f"--workload {path}: file not found")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json_object(line, where)
            except ConfigError as e:
                raise WorkloadError(f"{e} (one JSON object per line)") from None
            cat, prompt, mnt = obj.get("category"), obj.get("prompt"), obj.get("max_new_tokens")
            if not isinstance(cat, str) or not cat:
                raise WorkloadError(f"{where}: field 'category' must be a non-empty string")
            if not isinstance(prompt, str) or not prompt:
                raise WorkloadError(f"{where}: field 'prompt' must be a non-empty string")
            if not isinstance(mnt, int) or isinstance(mnt, bool) or mnt < 1:
                raise WorkloadError(f"{where}: field 'max_new_tokens' must be an integer >= 1, "
                                    f"got {mnt!r}")
            out.append(Request(cat, prompt, mnt))
    if not out:
        raise WorkloadError(f"--workload {path}: no requests")
    return out


def by_category(reqs: list[Request]) -> dict[str, list[Request]]:
    cats: dict[str, list[Request]] = {}
    for r in reqs:
        cats.setdefault(r.category, []).append(r)
    return cats
