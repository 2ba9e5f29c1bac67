"""Fusion drafters: one tree from a model drafter and a retrieval drafter (RASD)."""
