import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _no_triton_interpreter_by_default():
    """tests/kernels sets TRITON_INTERPRET=1 at collection (Triton reads it on
    import); drop it for the session so neither other tests nor the engine
    subprocesses they start see it. The kernel tests set it back per test."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    yield
    if saved is not None:
        os.environ["TRITON_INTERPRET"] = saved


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A seeded tiny Llama + locally trained tokenizer (no model hub)."""
    from specpack.testing.tiny_models import build_tiny_llama

    return str(build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0))
