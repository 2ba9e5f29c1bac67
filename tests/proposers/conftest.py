import numpy as np
import pytest


@pytest.fixture(scope="module")
def draft_lm(tiny_model_dir):
    """The tiny seeded Llama as an in-memory drafter (loaded once per module)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def random_datastore(tmp_path_factory):
    """A small corpus index of random token documents."""
    from specpack.proposers.retrieval.corpus_index import build_datastore

    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("ds") / "ds"
    build_datastore([rng.integers(3, 60, size=200).tolist() for _ in range(4)], out)
    return str(out)
