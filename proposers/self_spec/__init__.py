"""Self-speculative drafters: the target model drafts for itself.

The family of MagicDec (Chen et al., 2024, arXiv:2408.11049): the target
drafts over a sparse view of its own KV cache (StreamingLLM sink + recent
window, or an attention-selected subset) and verifies with the full cache.
A drafter here receives the target through
:meth:`specpack.protocols.Proposer.attach_target` (vLLM's ``load_model``,
the reference runtime's target) and declares ``needs_target`` in its
method table row. No method is registered here yet (open issue: MagicDec).
"""
