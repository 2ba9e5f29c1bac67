"""specpack.proposers: drafters and policies, engine-agnostic (DESIGN.md §2-3)."""

from specpack.proposers.suffix import SuffixProposer

__all__ = ["SuffixProposer"]
