"""Retrieval drafters: drafts from token statistics, no model forward.

``suffix`` (SuffixDecoding), ``datastore`` (REST over a corpus index),
``token_recycling`` and ``cascade`` (all of them in order of locality).
"""
