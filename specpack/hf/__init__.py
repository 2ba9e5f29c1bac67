"""specpack.hf: the reference runtime on Hugging Face ``transformers``.

Hosts every specpack proposer (trees included) against a real model and is
the ground truth for losslessness tests. See :func:`generate`.
"""

from specpack.hf.runtime import GenerateResult, generate

__all__ = ["GenerateResult", "generate"]
