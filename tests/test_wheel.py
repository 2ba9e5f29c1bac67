"""An installed (non-editable) wheel imports every package under specpack.*
and installs no top-level kernels/proposers modules."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["specpack", "specpack.proposers", "specpack.proposers.retrieval",
            "specpack.proposers.model", "specpack.proposers.fusion", "specpack.proposers.policy",
            "specpack.proposers.self_spec", "specpack.kernels", "specpack.vllm_plugins",
            "specpack.hf", "specpack.bench", "specpack.models", "specpack.sglang_plugins",
            "specpack.testing"]


def test_wheel_layout(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(ROOT)], check=True, timeout=300)
    (wheel,) = wheels.glob("specpack-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, timeout=300)
    top = sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info"))
    assert top == ["bin", "specpack"] or top == ["specpack"], top
    code = (
        "import importlib, sys\n"
        f"for name in {PACKAGES!r}:\n"
        "    m = importlib.import_module(name)\n"
        f"    assert m.__file__.startswith({str(target)!r}), (name, m.__file__)\n"
        "for bad in ('kernels', 'proposers', 'vllm_plugins', 'sglang_plugins'):\n"
        "    try:\n"
        "        importlib.import_module(bad)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    raise SystemExit(f'top-level module {bad} is importable')\n"
        "print('ok')\n"
    )
    # run from tmp_path with only the wheel's target on the path (plus deps)
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    r = subprocess.run([sys.executable, "-I", "-c",
                        f"import sys; sys.path.insert(0, {str(target)!r}); exec({code!r})"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_transformers_floor_is_declared_and_checked():
    """pyproject's floor is the one ``specpack.hf`` checks at import (4.56:
    ``from_pretrained(dtype=)`` and ``Cache.layers``)."""
    import re
    import tomllib

    import pytest

    from specpack.hf import MIN_TRANSFORMERS, check_transformers

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = {re.fullmatch(r"transformers>=(\d+)\.(\d+)", d).groups()
              for extra in ("hf", "test") for d in meta["optional-dependencies"][extra]
              if d.startswith("transformers")}
    assert floors == {tuple(map(str, MIN_TRANSFORMERS))}
    check_transformers("4.56.0")
    with pytest.raises(ImportError, match="transformers >= 4.56, found 4.55.2"):
        check_transformers("4.55.2")
