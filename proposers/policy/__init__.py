"""The policy layer: how much and what to speculate, per request and step.

Stopping rules (``stopping``), bandits over configurations (``bandits``),
the online step-cost model with goodput-greedy auto-off (``cost_model``),
and ``policy_proposer.PolicyProposer`` which wraps proposers with them.
"""
