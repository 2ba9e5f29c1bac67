"""SGLang version gate: specpack's SGLang adapter is tested against 0.5.23."""

from __future__ import annotations

import logging
import os
from importlib import metadata

logger = logging.getLogger("specpack.sglang")

TESTED = ("0.5.23",)


def installed_sglang_version() -> str | None:
    try:
        return metadata.version("sglang")
    except metadata.PackageNotFoundError:
        return None


def check_sglang_version(found: str | None = None) -> bool:
    """True when specpack may register its algorithms.

    On an untested version the algorithms are not registered (unless
    ``SPECPACK_STRICT_VERSION=0``), with a message saying why: a server that
    does not ask for a specpack algorithm keeps working, and one that does
    fails at argument parsing, before loading any model.
    """
    found = found or installed_sglang_version()
    if found in TESTED:
        logger.info("specpack: SGLang %s found (tested: %s)", found, ", ".join(TESTED))
        return True
    msg = (f"specpack: SGLang {found} found, but specpack's SGLang adapter is tested only "
           f"with {', '.join(TESTED)}; it builds on SGLang internals (NGRAMWorker, "
           "CustomSpecAlgo) that change between releases.")
    if os.environ.get("SPECPACK_STRICT_VERSION", "1") != "0":
        logger.error("%s The SPECPACK_* speculative algorithms are NOT registered. Install "
                     "sglang==0.5.23, or set SPECPACK_STRICT_VERSION=0 to register them "
                     "anyway.", msg)
        return False
    logger.warning("%s Registering anyway (SPECPACK_STRICT_VERSION=0).", msg)
    return True
