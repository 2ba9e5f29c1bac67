"""``max_active_requests`` caps the per-request state of every method of the table.

Each method is built with a cap of 3 and driven with 10 requests that each
take a few steps: the states held never exceed the cap, stateful methods
reach it (so the bound is exercised, not vacuous), a request evicted and
coming back still gets drafts, and releasing every request leaves nothing.
"""

import numpy as np
import pytest

from specpack.methods import METHODS, loaded_draft_builder
from specpack.protocols import Budget, Feedback, RequestView
from specpack.registry import build_pipeline

CAP = 3
#: methods that keep no per-request state at all (their index is shared)
STATELESS = {"datastore"}


def settings(spec, tiny_model_dir, datastore):
    s = {"max_active_requests": CAP}
    if spec.needs_draft_model:
        s["draft_model"] = tiny_model_dir
    if spec.needs_datastore:
        s["datastore_path"] = datastore
    return s


@pytest.mark.parametrize("spec", list(METHODS.values()), ids=list(METHODS))
@pytest.mark.parametrize("policy", [None, {"kind": "fixed", "auto_off": False}],
                         ids=["bare", "policy"])
def test_max_active_requests_bounds_every_method(spec, policy, tiny_model_dir, random_datastore,
                                                 draft_lm):
    raw = settings(spec, tiny_model_dir, random_datastore)
    if policy is not None:
        raw["policy"] = policy
    prop = build_pipeline(raw, method=spec.name, max_nodes=6, build=loaded_draft_builder(draft_lm))
    rng = np.random.default_rng(1)
    contexts = {f"r{i}": rng.integers(3, 60, size=12).astype(np.int32) for i in range(10)}
    peak = 0
    drafted = 0
    for key, ctx in contexts.items():
        for step in range(3):
            ctx = np.r_[ctx, ctx[step:step + 2]].astype(np.int32)
            (d,) = prop.propose([RequestView(key, ctx, Budget(6, 6), accepted=step - 1)])
            drafted += len(d)
            prop.observe([Feedback(key, len(d), min(1, len(d)))])
            peak = max(peak, prop.num_tracked())
            assert prop.num_tracked() <= CAP, (spec.name, key, step)
        contexts[key] = ctx
    assert drafted > 0
    # a policy keeps a few numbers per request, capped by the method's cap too
    assert peak == (0 if spec.name in STATELESS and policy is None else CAP)
    # the first request was evicted long ago: it comes back and is served from its context
    (d,) = prop.propose([RequestView("r0", contexts["r0"], Budget(6, 6))])
    assert prop.num_tracked() <= CAP
    for key in contexts:
        prop.release(key, finished=False)
    assert prop.num_tracked() == 0
