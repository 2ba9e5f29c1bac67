"""specpack.kernels: verification math and tree-attention kernels.

Pure functions over tensors, each fast path next to a plain torch reference
(DESIGN.md §5). Populated by the verification and kernel issues; imports of
this package never require a GPU.
"""
