"""Greedy losslessness of the reference runtime against ``model.generate``,
and KV compaction: after every step each request's cache equals a plain
forward over its committed tokens."""

import numpy as np
import pytest
import torch

from specpack.config import DraftModelConfig, SuffixConfig
from specpack.hf import generate
from specpack.proposers.model.draft_model import DraftModelProposer
from specpack.proposers.retrieval.suffix import SuffixProposer

MAX_NEW = 40


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from specpack.testing.tiny_models import build_tiny_llama

    other = build_tiny_llama(tmp_path_factory.mktemp("other"), seed=3)
    load = lambda p: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()  # noqa: E731
    return {"target": load(tiny_model_dir), "same": load(tiny_model_dir), "other": load(other)}


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(11)
    out = []
    for i in range(34):
        n = int(rng.integers(1, 30))
        p = rng.integers(3, 500, size=n).tolist()
        out.append(p * 3 if i % 4 == 0 else p)   # repetitive prompts: suffix drafts accepted
    return out


@pytest.fixture(scope="module")
def reference(models, prompts):
    m = models["target"]
    refs = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                             do_sample=False)
            refs.append(out[0, len(p):].tolist())
    return refs


def make(kind, models):
    if kind == "suffix":
        return SuffixProposer(SuffixConfig(suffix_decoding_max_spec_factor=2.0), max_nodes=8)
    drafter, mode = kind.split("-")
    cfg = DraftModelConfig(draft_model="in-memory", mode=mode, tree_width=3, max_expand=3)
    return DraftModelProposer(models[drafter], cfg, max_nodes=8)


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("kind", ["suffix", "same-chain", "same-tree", "other-chain", "other-tree"])
def test_greedy_identical_to_generate(models, prompts, reference, kind, batch_size):
    res = generate(models["target"], prompts, make(kind, models), max_new_tokens=MAX_NEW,
                   max_nodes=8, max_depth=4, batch_size=batch_size)
    for i, (a, b) in enumerate(zip(res.tokens, reference)):
        assert a == b, f"{kind} bs={batch_size} prompt {i}"
    s = res.summary()
    assert s["generated_tokens"] == MAX_NEW * len(prompts)
    by_pos = s["acceptance_by_position"]
    if kind.startswith("same"):
        # the drafter is the target: the best path is accepted to its full depth
        # at (almost) every step (the last steps are truncated by max_new_tokens)
        assert min(by_pos) > 0.85, by_pos
        assert s["tau"] > (3.0 if kind.endswith("chain") else 2.0)
    elif kind.startswith("other"):
        # an unrelated drafter: drafts are (almost) always fully rejected
        assert by_pos[0] < 0.2, by_pos
    else:
        assert s["tau"] > 1.3
        fully = [r for r in res.stats if r.accepted == 0]
        assert fully or s["accepted"] < s["drafted"]


def test_plain_decoding_path_has_tau_one(models, prompts, reference):
    res = generate(models["target"], prompts[:6], None, max_new_tokens=MAX_NEW, batch_size=3)
    assert res.tokens == reference[:6]
    assert res.tau == 1.0


def test_kv_cache_equals_plain_forward_after_every_step(models, prompts):
    target = models["target"]
    checked = {"n": 0}

    def check(lm, keys, committed):
        for i, key in keys.items():
            ctx = committed[i][:-1]
            if not ctx:
                continue
            with torch.no_grad():
                out = target(input_ids=torch.tensor([ctx]), use_cache=True)
            cache = lm.layer_kv(key)
            assert lm.length(key) == len(ctx)
            for layer, (k, v) in enumerate(cache):
                ref = out.past_key_values.layers[layer]
                torch.testing.assert_close(k, ref.keys, atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(v, ref.values, atol=1e-4, rtol=1e-4)
            checked["n"] += 1

    proposer = DraftModelProposer(models["other"], DraftModelConfig(draft_model="m", mode="tree"),
                                  max_nodes=8)
    generate(target, prompts[:5], proposer, max_new_tokens=24, max_nodes=8, max_depth=3,
             batch_size=3, on_step=check)
    suffix = SuffixProposer(max_nodes=8)
    generate(target, prompts[:4], suffix, max_new_tokens=24, batch_size=2, on_step=check)
    assert checked["n"] > 40


def test_draft_model_cache_resyncs_after_rejections(models):
    """The drafter's own cache must follow the committed tokens exactly."""
    prop = DraftModelProposer(models["other"], DraftModelConfig(draft_model="m"), max_nodes=4)
    prompt = [5, 6, 7, 8]
    seen = []

    def check(lm, keys, committed):
        for i, key in keys.items():
            cached = prop.engine.committed(key)
            # after drafting (drafted nodes rolled back) the drafter holds the
            # context it drafted from: a prefix of what is committed now
            assert cached and committed[i][:len(cached)] == cached
            assert prop.engine.block_size(key) == 0
            seen.append(len(cached))

    generate(models["target"], [prompt], prop, max_new_tokens=20, max_nodes=4, max_depth=4,
             on_step=check)
    assert len(seen) >= 5 and seen == sorted(seen)
    # finished requests release their drafter KV pages
    assert prop.engine.seqs == {} and prop.engine.pages_in_use() == 0


def test_rejects_bad_arguments(models):
    with pytest.raises(ValueError, match="temperature"):
        generate(models["target"], [[1, 2]], None, temperature=-1)
    with pytest.raises(ValueError, match="at least one token"):
        generate(models["target"], [[]], None)


def test_dense_mask_verification_path_matches(models, prompts, reference):
    """The transformers-SDPA path (tree_attention=None) verifies the same trees."""
    prop = DraftModelProposer(models["same"], DraftModelConfig(draft_model="m", mode="tree"),
                              max_nodes=8)
    res = generate(models["target"], prompts[:6], prop, max_new_tokens=MAX_NEW, max_nodes=8,
                   max_depth=3, batch_size=3, tree_attention=None)
    assert res.tokens == reference[:6] and res.tau > 2.0
