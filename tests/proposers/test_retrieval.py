"""Corpus datastore, Token Recycling, tree merge, cascade and fusion: edge cases."""

import numpy as np
import pytest

from specpack.config import (CascadeConfig, ConfigError, DatastoreConfig, TokenRecyclingConfig,
                             parse_method_config)
from specpack.draft import Draft
from specpack.protocols import Budget, RequestView
from specpack.proposers.retrieval.corpus_index import (Datastore, build_datastore, continuation_tree,
                                          truncated_suffix_array)
from specpack.proposers.retrieval.cascade import CascadeProposer, draft_score
from specpack.proposers.retrieval.datastore import DatastoreProposer
from specpack.proposers.retrieval.token_recycling import TokenRecyclingProposer, build_template
from specpack.token_trie import merge_trees, path_set


def view(ctx, n=16, key="r", accepted=-1):
    return RequestView(key, np.asarray(ctx, np.int32), Budget(n, n), accepted=accepted)


# ------------------------------------------------------------------ suffix array
def test_truncated_suffix_array_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 300))
        t = rng.integers(0, 4, size=n).astype(np.int32)
        sa = truncated_suffix_array(t, 8)
        ref = sorted(range(n), key=lambda i: (list(t[i:i + 8]), i))
        # past-the-end compares smaller: a proper prefix sorts first, as in the list order
        assert sa.tolist() == ref


def test_build_is_byte_identical(tmp_path):
    docs = [[1, 2, 3, 4, 5], [2, 3, 4, 9], [7]]
    build_datastore(docs, tmp_path / "a")
    build_datastore(docs, tmp_path / "b")
    for f in ("tokens.npy", "index.npy", "meta.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_empty_corpus(tmp_path):
    meta = build_datastore([], tmp_path / "e")
    assert meta["num_tokens"] == 0
    store = Datastore(tmp_path / "e")
    assert store.lookup(np.array([1, 2, 3]))[0] == 0
    prop = DatastoreProposer(DatastoreConfig(datastore_path=str(tmp_path / "e")))
    assert len(prop.propose([view([1, 2, 3])])[0]) == 0


def test_lookup_prefers_longest_match_and_stops_at_documents(tmp_path):
    build_datastore([[1, 2, 3, 4, 5, 6], [9, 3, 4, 7, 8], [3, 4, 7, 8, 1]], tmp_path / "d")
    store = Datastore(tmp_path / "d")
    m, conts = store.lookup(np.array([0, 2, 3, 4]), max_match=16, min_match=2)
    assert m == 3 and conts.tolist() == [[5, 6] + [-1] * 8]      # "2 3 4" only in doc 0
    m, conts = store.lookup(np.array([5, 5, 3, 4]))
    assert m == 2 and sorted(c[:2] for c in conts.tolist()) == [[5, 6], [7, 8], [7, 8]]
    # continuations never cross a document boundary
    m, conts = store.lookup(np.array([7, 8]))
    assert sorted(c[c >= 0].tolist() for c in conts) == [[], [1]] or \
        sorted(c[c >= 0].tolist() for c in conts) == [[1]]


def test_query_longer_than_any_match_and_no_match(tmp_path):
    build_datastore([[1, 2, 3, 1, 2, 4]], tmp_path / "d")
    store = Datastore(tmp_path / "d")
    m, conts = store.lookup(np.array([9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 1, 2]))
    assert m == 2 and sorted(c[0] for c in conts) == [3, 4]
    assert store.lookup(np.array([8, 8]))[0] == 0
    assert store.lookup(np.array([1]), min_match=2)[0] == 0


def test_corpus_of_one_repeated_token(tmp_path):
    build_datastore([[5] * 1000], tmp_path / "d")
    prop = DatastoreProposer(DatastoreConfig(datastore_path=str(tmp_path / "d"), max_matches=8,
                                             continuation_length=6))
    d = prop.propose([view([5] * 40, n=64)])[0]
    assert d.is_chain and d.tokens.tolist() == [5] * 6
    assert prop.last_match == 16
    assert np.allclose(d.probs, 1.0)


def test_continuation_tree_keeps_most_frequent_prefixes():
    conts = np.array([[1, 2, 3], [1, 2, 4], [1, 5, -1], [6, -1, -1]], np.int32)
    toks, pars, probs = continuation_tree(conts, 3)
    d = Draft(toks, pars, probs)
    assert path_set(d) == {(1,), (1, 2), (1, 2, 3)}           # the most frequent chain first
    assert probs[0] == pytest.approx(0.75)
    toks, pars, probs = continuation_tree(conts, 4)
    assert path_set(Draft(toks, pars, probs)) == {(1,), (1, 2), (1, 2, 3), (6,)}  # ties: shallower
    # many first tokens, one deep frequent chain: the chain survives a small budget
    wide = np.array([[9, 8, 7, 6]] * 5 + [[t, -1, -1, -1] for t in range(20, 40)], np.int32)
    toks, pars, probs = continuation_tree(wide, 4)
    assert Draft(toks, pars, probs).best_path_tokens().tolist() == [9, 8, 7, 6]
    toks, pars, probs = continuation_tree(conts, 100)
    assert len(toks) == 6 and (pars < np.arange(6)).all()


def test_datastore_memory_mapped(tmp_path):
    build_datastore([[1, 2, 3]], tmp_path / "d")
    store = Datastore(tmp_path / "d")
    assert isinstance(store.tokens, np.memmap) and isinstance(store.index, np.memmap)
    with pytest.raises(FileNotFoundError, match="not a specpack datastore"):
        Datastore(tmp_path)


# ------------------------------------------------------------------ token recycling
def test_template_is_parents_first_and_best_first():
    parents, ranks, prior = build_template(80, 8, 8)
    assert len(parents) == 80 and (parents < np.arange(80)).all()
    assert (np.diff(prior) <= 1e-12).all()
    assert len(build_template(0, 8, 8)[0]) == 0


def test_recycling_mru_update_and_draft():
    tr = TokenRecyclingProposer(TokenRecyclingConfig(top_k=3))
    assert len(tr.propose([view([1])])[0]) == 0            # nothing learned yet
    tr.learn_bigrams(np.array([1, 2, 1, 3, 1, 4, 1, 3]))
    assert tr.table[1].tolist() == [3, 4, 2]               # most recent first, k capped
    d = tr.draft_from(1, 4, 4)
    assert d.tokens[0] == 3 and (d.parents < np.arange(len(d))).all()


def test_recycling_target_topk_updates_and_save_load(tmp_path):
    cfg = TokenRecyclingConfig(top_k=4)
    tr = TokenRecyclingProposer(cfg)
    tr.observe_target_topk(np.array([7, 9]), np.array([[1, 2, 3, 4], [5, 6, 7, 8]]))
    assert tr.table[7].tolist() == [1, 2, 3, 4] and tr.topk_updates == 2
    path = str(tmp_path / "t.npy")
    tr.save(path)
    tr2 = TokenRecyclingProposer(TokenRecyclingConfig(top_k=4, table_path=path))
    assert np.array_equal(tr.table, tr2.table)
    with pytest.raises(ValueError, match="top_k = 4"):
        TokenRecyclingProposer(TokenRecyclingConfig(top_k=8, table_path=path))


def test_recycling_table_bounded():
    tr = TokenRecyclingProposer(TokenRecyclingConfig(top_k=8, vocab_size=32768))
    tr.learn_bigrams(np.array([32767, 1, 40000, 2]))      # ids beyond vocab_size are ignored
    assert tr.table.shape == (32768, 8) and tr.nbytes <= 2 * 1024 * 1024
    assert tr.table[32767, 0] == 1


# ------------------------------------------------------------------ tree merge
def test_merge_disjoint_identical_nested():
    a = Draft.chain([1, 2, 3], probs=np.array([0.9, 0.8, 0.7], np.float32))
    b = Draft.chain([4, 5], probs=np.array([0.6, 0.5], np.float32))
    m = merge_trees([a, b], 10)
    assert path_set(m) == path_set(a) | path_set(b) and len(m) == 5
    same = merge_trees([a, a], 10)
    assert path_set(same) == path_set(a) and len(same) == 3
    nested = Draft.chain([1, 2], probs=np.array([0.95, 0.1], np.float32))
    m = merge_trees([a, nested], 10)
    assert path_set(m) == path_set(a)
    assert m.probs[0] == pytest.approx(0.95)             # max of the two
    assert (np.diff(m.probs[m.best_path()]) <= 0).all()   # still monotone on a path
    small = merge_trees([a, b], 2)
    assert path_set(small) == {(1,), (1, 2)}
    assert len(merge_trees([Draft.empty(), Draft.empty()], 4)) == 0


# ------------------------------------------------------------------ cascade
def test_cascade_first_source_wins_then_falls_through(tmp_path):
    build_datastore([[10, 11, 12, 13, 14, 15]], tmp_path / "d")
    cfg = parse_method_config({"method": "cascade", "min_score": 1.0,
                               "datastore": {"datastore_path": str(tmp_path / "d")}})
    assert cfg.resolved_sources == ["request", "global", "datastore", "token_recycling"]
    c = CascadeProposer(cfg, max_nodes=8)
    # this request repeats itself: the request's own trie answers
    d = c.propose([view([1, 2, 3, 1, 2, 3, 1, 2], key="a")])[0]
    assert len(d) and c.chosen["request"] == 1
    # nothing local, the corpus has it
    d = c.propose([view([20, 21, 11, 12], key="b")])[0]
    assert d.tokens[:3].tolist() == [13, 14, 15] and c.chosen["datastore"] == 1
    merged = CascadeProposer(parse_method_config({"method": "cascade", "mode": "merge",
                                                  "datastore": {"datastore_path":
                                                                str(tmp_path / "d")}}), max_nodes=8)
    d = merged.propose([view([1, 11, 12, 1, 11], key="c")])[0]
    assert (11 in d.tokens.tolist()) and (12 in d.tokens.tolist())
    assert draft_score(Draft.empty()) == 0.0


def test_cascade_config_errors():
    with pytest.raises(ConfigError, match="'datastore' but no 'datastore' settings"):
        parse_method_config({"method": "cascade", "sources": ["datastore"]})
    with pytest.raises(ConfigError, match="lists a source twice"):
        parse_method_config({"method": "cascade", "sources": ["request", "request"]})
    with pytest.raises(ConfigError, match="token_recycling: field 'top_k' = 0"):
        parse_method_config({"method": "cascade", "token_recycling": {"top_k": 0}})
    with pytest.raises(ConfigError, match="min_match \\(5\\) must be <= max_match \\(3\\)"):
        DatastoreConfig.model_validate  # noqa: B018 (documented below)
        parse_method_config({"method": "datastore", "datastore_path": "x", "min_match": 5,
                             "max_match": 3})
    with pytest.raises(ConfigError, match="retrieval: field 'method' = 'draft_model'"):
        parse_method_config({"method": "rasd", "draft_model": "m",
                             "retrieval": {"method": "draft_model", "draft_model": "m"}})
    assert isinstance(parse_method_config({"method": "cascade"}), CascadeConfig)


# ------------------------------------------------------------------ fusion
def test_fusion_prunes_by_first_token_probability_and_merges():
    import torch

    from specpack.config import FusionConfig
    from specpack.proposers.fusion.rasd import FusionProposer

    class Dummy:
        def release(self, *a, **k):
            pass

    f = FusionProposer(FusionConfig(draft_model="m", prune_threshold=0.2), max_nodes=6,
                       draft=Dummy(), retrieval=Dummy())
    model_tree = Draft.chain([1, 2], probs=np.array([0.7, 0.5], np.float32))
    retr = Draft(np.array([1, 3, 4, 5], np.int32), np.array([-1, 0, -1, 2], np.int32),
                 np.array([0.6, 0.6, 0.3, 0.3], np.float32))
    q = torch.zeros(10)
    q[1], q[4] = 0.7, 0.1                         # branch "4 5" starts with an unlikely token
    out = f.fuse(model_tree, retr, q, 6)
    assert path_set(out) == {(1,), (1, 2), (1, 3)}
    assert f.pruned == 1 and f.kept == 1
    # identical trees merge into one
    assert path_set(f.fuse(model_tree, model_tree, q, 6)) == path_set(model_tree)
