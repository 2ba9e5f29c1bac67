"""specpack.proposers: drafters and policies, engine-agnostic (DESIGN.md §2-3).

One sub-package per method family; every method is one row of the method
table (:mod:`specpack.methods`):

* ``retrieval/`` - SuffixDecoding, corpus datastore (REST), Token
  Recycling, the retrieval cascade;
* ``model/`` - drafting with a small draft LM;
* ``fusion/`` - model + retrieval fusion (RASD);
* ``self_spec/`` - the target drafting for itself (MagicDec);
* ``policy/`` - how much to speculate: stopping rules, bandits, the step
  cost model, and :class:`~specpack.proposers.policy.policy_proposer.PolicyProposer`,
  a proposer around proposers.
"""
