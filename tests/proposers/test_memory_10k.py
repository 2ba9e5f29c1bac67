"""Every method of the table through 10,000 requests with distinct prompts:
per-request state, global caches and tables stay under their configured caps.

Requests arrive 64 at a time (one batched ``propose`` per wave, so caps
smaller than a wave are exercised too), draft once or twice, and leave -
finished or preempted, alternately - so the global structures (suffix
output trie, Token Recycling table) fill and evict the whole time.
"""

import numpy as np
import pytest

from specpack.methods import METHODS, loaded_draft_builder
from specpack.protocols import Budget, Feedback, RequestView
from specpack.registry import build_pipeline

N_REQUESTS, WAVE, CAP = 10_000, 64, 32
SUFFIX_CAPS = {"suffix_decoding_max_cached_requests": 50,
               "suffix_decoding_max_cached_tokens": 3000}
VOCAB_CAP = 400


def settings(spec, tiny_model_dir, datastore) -> dict:
    s = {"max_active_requests": CAP}
    if spec.name == "suffix":
        s.update(SUFFIX_CAPS)
    if spec.name == "token_recycling":
        s["vocab_size"] = VOCAB_CAP
    if spec.name == "cascade":
        s.update(suffix=dict(SUFFIX_CAPS), token_recycling={"vocab_size": VOCAB_CAP})
    if spec.name == "rasd":
        s["retrieval"] = {"method": "suffix", **SUFFIX_CAPS}
    if spec.needs_draft_model:
        s["draft_model"] = tiny_model_dir
    if spec.needs_datastore:
        s["datastore_path"] = datastore
    return s


def holdings(prop) -> dict:
    """Everything the proposer (or its parts) holds that could grow."""
    out = {"tracked": prop.num_tracked()}
    parts = [prop] + [getattr(prop, a) for a in ("suffix", "recycling", "draft", "retrieval")
                      if getattr(prop, a, None) is not None]
    for p in parts:
        g = getattr(p, "global_cache", None)
        if g is not None:
            out["global_requests"] = len(g)
            out["global_tokens"] = g.num_tokens
            out["global_trie_nodes"] = g.trie.num_nodes - g.trie.num_dead
        if getattr(p, "table", None) is not None:
            out["table_rows"] = p.table.shape[0]
        if getattr(p, "_engine", None) is not None:
            out["kv_requests"] = len(p.engine.seqs)
            out["kv_pages"] = p.engine.pages_in_use()
            out["root_logits"] = len(p._root_logits)
    return out


def prop_engine_pages(prop) -> int:
    """The pool size of the (possibly wrapped) drafter's engine."""
    for p in [prop, getattr(prop, "draft", None)]:
        if getattr(p, "_engine", None) is not None:
            return p.engine.pool.num_pages
    raise AssertionError("no drafting engine found")


@pytest.mark.parametrize("spec", list(METHODS.values()), ids=list(METHODS))
def test_ten_thousand_requests_stay_under_the_caps(spec, tiny_model_dir, random_datastore, draft_lm):
    prop = build_pipeline(settings(spec, tiny_model_dir, random_datastore), method=spec.name,
                          max_nodes=4, build=loaded_draft_builder(draft_lm))
    rng = np.random.default_rng(0)
    peak: dict = {}
    for wave in range(N_REQUESTS // WAVE + 1):
        keys = [f"w{wave}-{i}" for i in range(WAVE)]
        ctxs = [rng.integers(3, 500, size=int(rng.integers(4, 24))).astype(np.int32)
                for _ in keys]
        prompt_lens = [c.size for c in ctxs]
        for step in range(1 + wave % 2):
            views = [RequestView(k, c, Budget(4, 4), accepted=step - 1, num_prompt_tokens=n)
                     for k, c, n in zip(keys, ctxs, prompt_lens)]
            drafts = prop.propose(views)
            prop.observe([Feedback(k, len(d), min(1, len(d))) for k, d in zip(keys, drafts)])
            ctxs = [np.r_[c, d.tokens[:1] if len(d) else c[:1]].astype(np.int32)
                    for c, d in zip(ctxs, drafts)]
            for name, v in holdings(prop).items():
                peak[name] = max(peak.get(name, 0), v)
        for i, k in enumerate(keys):
            prop.release(k, finished=i % 2 == 0)
    assert peak["tracked"] <= CAP, peak
    assert holdings(prop)["tracked"] == 0
    if "global_requests" in peak:
        assert peak["global_requests"] <= SUFFIX_CAPS["suffix_decoding_max_cached_requests"]
        assert peak["global_tokens"] <= SUFFIX_CAPS["suffix_decoding_max_cached_tokens"]
        # live trie nodes: at most depth x cached tokens (every suffix of every output)
        assert peak["global_trie_nodes"] <= 24 * SUFFIX_CAPS["suffix_decoding_max_cached_tokens"]
        assert peak["global_requests"] == SUFFIX_CAPS["suffix_decoding_max_cached_requests"]
    if "table_rows" in peak:
        assert peak["table_rows"] <= VOCAB_CAP
    if "kv_requests" in peak:
        assert peak["kv_requests"] <= CAP and peak["root_logits"] <= CAP
        assert 0 < peak["kv_pages"] <= prop_engine_pages(prop)
