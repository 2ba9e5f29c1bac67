import pytest
import torch


@pytest.fixture(scope="module")
def target(tiny_model_dir):
    """The tiny seeded Llama as a transformers model (eval mode)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
