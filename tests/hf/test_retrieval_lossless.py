"""Greedy losslessness of the retrieval family on the reference runtime."""

import pytest

from specpack.hf import generate
from specpack.proposers.retrieval.corpus_index import build_datastore
from specpack.methods import loaded_draft_builder
from specpack.registry import build_pipeline
from specpack.testing.tiny_models import random_prompts

MAX_NEW = 32


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(9, 8)


@pytest.fixture(scope="module")
def reference(target, prompts):
    return generate(target, prompts, None, max_new_tokens=MAX_NEW, batch_size=4).tokens


@pytest.fixture(scope="module")
def datastore(tmp_path_factory, reference, prompts):
    """A corpus that contains half of the reference outputs: REST must find them."""
    docs = [p + r for p, r in zip(prompts[::2], reference[::2])]
    out = tmp_path_factory.mktemp("ds") / "ds"
    build_datastore(docs, out)
    return str(out)


def settings(method, datastore, tiny_model_dir):
    if method == "datastore":
        return {"datastore_path": datastore}
    if method == "token_recycling":
        return {}
    if method == "cascade":
        return {"datastore": {"datastore_path": datastore}}
    if method == "cascade-merge":
        return {"mode": "merge", "datastore": {"datastore_path": datastore}}
    return {"draft_model": tiny_model_dir,
            "retrieval": {"method": "cascade", "datastore": {"datastore_path": datastore}}}


@pytest.mark.parametrize("method", ["datastore", "token_recycling", "cascade", "cascade-merge",
                                    "rasd"])
def test_retrieval_methods_lossless(method, target, prompts, reference, datastore,
                                    tiny_model_dir):
    base = method.split("-")[0]

    prop = build_pipeline(settings(method, datastore, tiny_model_dir), method=base,
                          max_nodes=12, build=loaded_draft_builder(target))
    res = generate(target, prompts, prop, max_new_tokens=MAX_NEW, max_nodes=12, max_depth=10,
                   batch_size=4)
    assert res.tokens == reference
    s = res.summary()
    assert s["accepted"] > 0, s
    if base == "datastore":
        # the corpus holds the outputs of the even prompts: long accepted runs
        even = [st.tau for st in res.stats[::2]]
        assert min(even) > 2.0, even
    if base == "token_recycling":
        assert prop.topk_updates > 0          # the runtime hands it the target's top-k
