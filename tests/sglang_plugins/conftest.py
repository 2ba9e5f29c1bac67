"""SGLang plugin tests: run in the separate SGLang environment (``make test``
runs them with ``.venv-sglang``; see tests/sglang_plugins/requirements.txt).

SGLang's CUDA kernel package cannot load on a CPU machine. Its Python code
imports one compiled op at module import (``sgl_kernel.speculative.
reconstruct_indices_from_tree_mask``, the CUDA version of the tree-index
reconstruction); where ``sgl_kernel`` is missing, a module whose op raises
NotImplementedError stands in so the rest of SGLang's real code imports. The
tests check the tree layout against SGLang's own CPU implementations of that
op instead (``ngram_worker._derive_tree_links`` and the Triton kernel
``reconstruct_indices_from_tree_mask_triton`` under ``TRITON_INTERPRET=1``).
"""

import os
import sys
import types

import importlib.util

import pytest

if importlib.util.find_spec("sglang") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    # Triton reads this at import: SGLang's Triton kernels run on CPU tensors
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import sgl_kernel.speculative  # noqa: F401
    except Exception:
        for name in [n for n in sys.modules if n == "sgl_kernel" or n.startswith("sgl_kernel.")]:
            del sys.modules[name]
        pkg = types.ModuleType("sgl_kernel")
        pkg.__path__ = []
        spec = types.ModuleType("sgl_kernel.speculative")

        def _cuda_only(*args, **kwargs):
            raise NotImplementedError("sgl_kernel's CUDA op is not available on this machine")

        spec.reconstruct_indices_from_tree_mask = _cuda_only
        pkg.speculative = spec
        sys.modules["sgl_kernel"] = pkg
        sys.modules["sgl_kernel.speculative"] = spec


@pytest.fixture(scope="session")
def sglang_plugins_loaded():
    os.environ["TRITON_INTERPRET"] = "1"   # before SGLang's Triton modules import
    from sglang.srt.plugins import load_plugins

    load_plugins()
    return True


@pytest.fixture(autouse=True)
def _triton_interpreter(monkeypatch):
    """The root conftest drops TRITON_INTERPRET for the session; SGLang's
    Triton kernels need it on this CPU machine."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
