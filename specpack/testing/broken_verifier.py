"""A deliberately broken verifier, the negative control of distribution tests.

:func:`accept_all_verify` accepts the draft's best path unconditionally and
samples the bonus token from the target after it. Its outputs are *not*
distributed like the target's, so a chi-square test that passes the real
verifier (:func:`specpack.kernels.verify.sample_verify`) must reject it;
otherwise the test could not fail.
"""

from __future__ import annotations

import torch

from specpack.draft import Draft
from specpack.kernels.verify import VerifyResult, _sample


def accept_all_verify(draft: Draft, target_probs: torch.Tensor,
                      generator: torch.Generator | None = None) -> VerifyResult:
    """Accept the best path, then sample the bonus token (broken on purpose)."""
    path = draft.best_path().tolist()
    row = path[-1] + 1 if path else 0
    nxt = _sample(target_probs[row].float(), generator)
    return VerifyResult(path, [int(draft.tokens[c]) for c in path] + [nxt])
