"""specpack's SGLang adapter against the real sglang==0.5.23 Python code."""

import json
import logging
import types

import numpy as np
import pytest
import torch

from specpack.draft import Draft
from specpack.protocols import NO_STOP, Proposer
from specpack.sglang_plugins.names import ALGORITHMS
from specpack.sglang_plugins.tree_layout import accepted_path, draft_to_tree, tree_links


# ------------------------------------------------------------------ registry
def test_entry_point_registers_every_name(sglang_plugins_loaded):
    from importlib.metadata import entry_points

    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    eps = [e for e in entry_points(group="sglang.srt.plugins") if e.name == "specpack"]
    assert eps and eps[0].value == "specpack.sglang_plugins.plugin:register"
    for name, method in ALGORITHMS.items():
        algo = SpeculativeAlgorithm.from_string(name.lower())
        assert algo.name == name and algo.method == method
        assert algo.is_speculative() and algo.is_ngram() and not algo.is_eagle()
    with pytest.raises(ValueError, match="Unknown speculative algorithm"):
        SpeculativeAlgorithm.from_string("SPECPACK_TYPO")


def test_spec_class_passes_sglang_conformance_and_adds_missing_methods(sglang_plugins_loaded):
    from sglang.srt.speculative.spec_registry import (CustomSpecAlgo,
                                                      _assert_custom_spec_algo_conforms)

    from specpack.sglang_plugins.algo import SpecpackSpecAlgo

    _assert_custom_spec_algo_conforms(SpecpackSpecAlgo)
    for m in ("create_future_map", "carries_draft_hidden_states", "need_topk",
              "get_platform_worker_cls"):
        assert not hasattr(CustomSpecAlgo, m)       # what 0.5.23 lacks ...
        assert callable(getattr(SpecpackSpecAlgo, m))  # ... and specpack provides
    algo = SpecpackSpecAlgo("SPECPACK_SUFFIX", lambda a: None)
    assert algo.carries_draft_hidden_states() is False
    assert algo.need_topk() is False and algo.has_draft_kv() is False


def _resolve(argv, monkeypatch, config=None, tmp_path=None):
    from sglang.srt.arg_groups.overrides import resolving_view
    from sglang.srt.arg_groups.speculative_hook import handle_speculative_decoding
    from sglang.srt.server_args import prepare_server_args

    if config is not None:
        f = tmp_path / "specpack.json"
        f.write_text(config if isinstance(config, str) else json.dumps(config))
        monkeypatch.setenv("SPECPACK_SGLANG_CONFIG", str(f))
    args = prepare_server_args(["--model-path", "/models/m", "--device", "cpu", *argv])
    handle_speculative_decoding(args)
    return args, resolving_view(args)


def test_server_args_get_specpack_defaults(sglang_plugins_loaded, monkeypatch):
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    from specpack.sglang_plugins.worker import SpecpackNgramWorker

    args, cfg = _resolve(["--speculative-algorithm", "specpack_suffix"], monkeypatch)
    assert cfg.speculative_algorithm == "SPECPACK_SUFFIX"
    assert cfg.speculative_num_draft_tokens == 16
    assert cfg.speculative_eagle_topk == 15 and cfg.speculative_num_steps == 1
    assert cfg.speculative_num_steps * cfg.speculative_eagle_topk <= 16   # no KV over-reserve
    assert cfg.max_running_requests == 48
    assert cfg.disable_overlap_schedule is True and cfg.enable_mixed_chunk is False
    algo = SpeculativeAlgorithm.from_string(cfg.speculative_algorithm)
    assert algo.resolve_max_speculative_num_draft_tokens(args) == 16   # KV sizing
    assert algo.create_worker(args) is SpecpackNgramWorker


def test_server_args_keep_user_values(sglang_plugins_loaded, monkeypatch):
    args, cfg = _resolve(["--speculative-algorithm", "SPECPACK_CASCADE",
                          "--speculative-num-draft-tokens", "8", "--max-running-requests", "7"],
                         monkeypatch)
    assert cfg.speculative_num_draft_tokens == 8 and cfg.speculative_num_steps == 1
    assert cfg.speculative_eagle_topk == 7 and cfg.max_running_requests == 7


def test_bad_settings_file_fails_before_start(sglang_plugins_loaded, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"server not started(.|\n)*suffix_decoding_min_token_prob"
                                         r"(.|\n)*less than or equal to 1"):
        _resolve(["--speculative-algorithm", "SPECPACK_SUFFIX"], monkeypatch,
                 {"suffix_decoding_min_token_prob": 3}, tmp_path)
    with pytest.raises(ValueError, match="not valid JSON"):
        _resolve(["--speculative-algorithm", "SPECPACK_SUFFIX"], monkeypatch, "{", tmp_path)
    with pytest.raises(ValueError, match=r"arms\[1\].num_tokens = 32 exceeds"):
        _resolve(["--speculative-algorithm", "SPECPACK_SUFFIX"], monkeypatch,
                 {"policy": {"kind": "ucb", "arms": [{"num_tokens": 2}, {"num_tokens": 32}]}},
                 tmp_path)
    with pytest.raises(ValueError, match="needs >= 2"):
        _resolve(["--speculative-algorithm", "SPECPACK_SUFFIX",
                  "--speculative-num-draft-tokens", "1"], monkeypatch)


def test_untested_version_is_not_registered(monkeypatch, caplog):
    from specpack.sglang_plugins.version import check_sglang_version

    monkeypatch.delenv("SPECPACK_STRICT_VERSION", raising=False)
    with caplog.at_level(logging.ERROR, logger="specpack.sglang"):
        assert check_sglang_version("0.5.99") is False
    assert "0.5.99" in caplog.text and "NOT registered" in caplog.text
    monkeypatch.setenv("SPECPACK_STRICT_VERSION", "0")
    assert check_sglang_version("0.5.99") is True
    assert check_sglang_version("0.5.23") is True


# ------------------------------------------------------------------ tree layout
def random_draft(rng, n, vocab=50):
    parents = [-1 if i == 0 or rng.random() < 0.25 else int(rng.integers(-1, i))
               for i in range(n)]
    return Draft(rng.integers(0, vocab, size=n).astype(np.int32), np.array(parents, np.int32),
                 np.sort(rng.random(n))[::-1].astype(np.float32))


def cases():
    rng = np.random.default_rng(0)
    out = [(Draft.empty(), 5), (Draft.chain([7]), 2), (Draft.chain([1, 2, 3, 4]), 5),
           (Draft.chain([1, 2, 3, 4, 5, 6]), 4)]            # chain longer than the width
    for _ in range(60):
        w = int(rng.integers(2, 20))
        out.append((random_draft(rng, int(rng.integers(1, 2 * w)), 30), w))
    return out


def expected_links(draft, width):
    """first child / next sibling of the layout, straight from parent pointers."""
    d = draft.truncated(width - 1)
    parent = np.full(width, -1)
    parent[1: len(d) + 1] = np.where(d.parents >= 0, d.parents + 1, 0)
    parent[len(d) + 1:] = 0                                 # padding: children of the root
    first, sib = np.full(width, -1), np.full(width, -1)
    for i in range(1, width):
        p = parent[i]
        kids = [k for k in range(1, width) if parent[k] == p]
        if first[p] < 0:
            first[p] = kids[0]
        j = kids.index(i)
        if j + 1 < len(kids):
            sib[i] = kids[j + 1]
    depth = np.zeros(width, int)
    for i in range(1, width):
        depth[i] = depth[parent[i]] + 1
    return depth, first, sib


def test_layout_matches_sglang_host_reconstruction():
    from sglang.srt.speculative.ngram_worker import _derive_tree_links

    for draft, w in cases():
        tokens, mask = draft_to_tree(draft, 99, w)
        assert tokens[0] == 99 and tokens.shape == (w,) and mask.shape == (w, w)
        depth, first, sib = expected_links(draft, w)
        nt, ns = _derive_tree_links(mask.reshape(-1), 1, w)   # SGLang's own
        assert nt[0].tolist() == first.tolist(), (draft, w)
        assert ns[0].tolist() == sib.tolist(), (draft, w)
        d2, _, f2, s2 = tree_links(mask)
        assert d2.tolist() == depth.tolist() and f2.tolist() == first.tolist()
        n = min(len(draft), w - 1)
        assert tokens[1: n + 1].tolist() == draft.tokens[:n].tolist()


def test_layout_matches_sglang_triton_reconstruction_batched():
    from sglang.kernels.ops.speculative.reconstruct_tree import (
        reconstruct_indices_from_tree_mask_triton)

    all_cases = cases()
    for w in (2, 5, 9, 16):
        batch = [(d, w) for d, ww in all_cases if ww == w] or [(Draft.empty(), w)]
        batch += [(Draft.chain(list(range(1, w))), w), (Draft.chain([3]), w)]
        bs = len(batch)
        masks = np.stack([draft_to_tree(d, 5, w)[1] for d, _ in batch])
        seq = torch.tensor([10 + 3 * b for b in range(bs)], dtype=torch.int64)
        pos = torch.empty(bs * w, dtype=torch.int64)
        ri = torch.empty((bs, w), dtype=torch.int64)
        nt = torch.empty((bs, w), dtype=torch.int64)
        ns = torch.empty((bs, w), dtype=torch.int64)
        reconstruct_indices_from_tree_mask_triton(torch.from_numpy(masks.reshape(-1)), seq, pos,
                                                  ri, nt, ns, bs, w)
        for b, (d, _) in enumerate(batch):
            depth, first, sib = expected_links(d, w)
            assert pos[b * w:(b + 1) * w].tolist() == (depth + int(seq[b])).tolist()
            assert nt[b].tolist() == first.tolist() and ns[b].tolist() == sib.tolist()
            assert ri[b].tolist() == list(range(b * w, (b + 1) * w))


def test_greedy_walk_accepts_the_longest_matching_path():
    # root -> 1 -> 2 -> 3 ; root -> 1 -> 4 ; root -> 5
    d = Draft(np.array([1, 2, 3, 4, 5], np.int32), np.array([-1, 0, 1, 0, -1], np.int32))
    tokens, mask = draft_to_tree(d, 9, 8)
    target = np.full(8, -1)
    target[0], target[1], target[4] = 1, 4, 7      # target continues 1, 4, then 7
    assert [tokens[i] for i in accepted_path(tokens, mask, target)] == [1, 4]


# ------------------------------------------------------------------ worker logic
def make_req(rid, prompt, output=()):
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    r = Req(rid, "", list(prompt), SamplingParams(max_new_tokens=64, temperature=0))
    r.output_ids.extend(output)
    return r


def make_batch(*reqs):
    return types.SimpleNamespace(reqs=list(reqs))


class Recording(Proposer):
    """Wraps a real proposer and records what the worker asks and reports."""

    def __init__(self, inner, fail_on=None):
        self.inner, self.fail_on = inner, fail_on
        self.views, self.feedback, self.released, self.steps = [], [], [], []

    def propose(self, batch, stop_rule=NO_STOP):
        self.views.append([(v.key, v.context.tolist(), v.budget.max_nodes) for v in batch])
        if self.fail_on is not None and any(v.key == self.fail_on for v in batch):
            raise RuntimeError("boom")
        return self.inner.propose(batch)

    def observe(self, fb):
        self.feedback += list(fb)
        self.inner.observe(fb)

    def observe_step(self, num_tokens, max_depth, seconds):
        self.steps.append((num_tokens, max_depth, seconds))
        self.inner.observe_step(num_tokens, max_depth, seconds)

    def release(self, key, finished=True):
        self.released.append((key, finished))
        self.inner.release(key, finished)


#: resolved server args the scheduler's published context carries for the worker
PUBLISHED_FIELDS = ("speculative_algorithm", "speculative_num_draft_tokens",
                    "speculative_eagle_topk", "speculative_num_steps",
                    "disable_overlap_schedule", "enable_mixed_chunk", "max_running_requests",
                    "page_size", "device")


@pytest.fixture
def publish(sglang_plugins_loaded, monkeypatch, caplog):
    """Publish resolved server args through SGLang's own scoped override
    (``RuntimeContext.override_server_args``), restored after the test."""
    from sglang.srt.runtime_context import get_context

    monkeypatch.delenv("SPECPACK_SGLANG_CONFIG", raising=False)
    installed = []

    def _publish(argv, **changes):
        _, cfg = _resolve(argv, monkeypatch)            # handle_server_args' defaults
        # prepare_server_args reconfigures root logging (replacing its
        # handlers): give pytest's capture handler back
        if caplog.handler not in logging.getLogger().handlers:
            logging.getLogger().addHandler(caplog.handler)
        fields = {n: getattr(cfg, n) for n in PUBLISHED_FIELDS}
        fields.update(changes)
        override = get_context().override_server_args(**fields)
        server_args = override.install()
        installed.append(override)
        return server_args

    yield _publish
    for override in reversed(installed):
        override.restore()


@pytest.fixture
def build_worker(publish, monkeypatch):
    """The scheduler's path: ``create_worker(server_args)`` then the class
    called with keyword arguments; ``wrap`` wraps the proposer built from the
    settings (to record or replace it)."""
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    import specpack.sglang_plugins.worker as worker_mod

    def _build(algorithm="SPECPACK_SUFFIX", width=6, wrap=None):
        server_args = publish(["--speculative-algorithm", algorithm,
                               "--speculative-num-draft-tokens", str(width)])
        built = []
        if wrap is not None:
            real = worker_mod.build_pipeline

            def build_pipeline(*args, **kwargs):
                built.append(kwargs)
                return wrap(real(*args, **kwargs))

            monkeypatch.setattr(worker_mod, "build_pipeline", build_pipeline)
        cls = SpeculativeAlgorithm.from_string(algorithm).create_worker(server_args)
        target = types.SimpleNamespace(model_runner=object())
        worker = cls(server_args=server_args, gpu_id=0, nccl_port=0, target_worker=target)
        assert worker.server_args is server_args and worker.target_worker is target
        assert worker.model_runner is target.model_runner
        if wrap is not None:
            assert built == [{"method": ALGORITHMS[algorithm], "max_nodes": width - 1,
                              "where": "specpack settings"}]
        return worker

    return _build


def test_worker_built_through_sglang_constructor_reads_published_context(build_worker,
                                                                         publish):
    from specpack.proposers.retrieval.suffix import SuffixProposer
    from specpack.sglang_plugins.worker import SpecpackNgramWorker

    worker = build_worker("SPECPACK_SUFFIX", width=6)
    assert type(worker) is SpecpackNgramWorker
    assert worker.draft_token_num == worker.speculative_num_draft_tokens == 6
    assert worker.topk == 5 and worker.speculative_num_steps == 1     # handle_server_args
    assert worker.enable_overlap is False and worker.device == "cpu"
    assert worker.draft_worker is None                  # NGRAM: no draft model
    assert worker.batcher.width == 6 and worker.batcher.method == "suffix"
    assert isinstance(worker.batcher.proposer, SuffixProposer)
    assert worker.list_external_corpora() == {}
    with pytest.raises(NotImplementedError, match="SPECPACK_DATASTORE"):
        worker.add_external_corpus("c", [[1, 2]])
    # the worker refuses overlap scheduling, naming the setting
    server_args = publish(["--speculative-algorithm", "SPECPACK_SUFFIX"],
                          disable_overlap_schedule=False)
    with pytest.raises(ValueError, match="disable_overlap_schedule = True"):
        SpecpackNgramWorker(server_args=server_args, gpu_id=0, nccl_port=0,
                            target_worker=types.SimpleNamespace(model_runner=None))


def test_worker_drafts_layout_feedback_and_release(build_worker):
    w = 6
    worker = build_worker("SPECPACK_SUFFIX", width=w, wrap=Recording)
    prop = worker.batcher.proposer
    assert isinstance(prop, Recording)
    a = make_req("a", [1, 2, 3, 4, 1, 2, 3], [4, 1, 2])          # repeats: suffix drafts 3, 4
    b = make_req("b", [7, 8], [])
    batch = make_batch(a, b)
    tokens, mask = worker._prepare_draft_tokens(batch)
    assert tokens.dtype == np.int64 and tokens.shape == (2 * w,)
    assert mask.dtype == bool and mask.shape == (2 * w * w,)
    assert prop.views[-1] == [("a", [1, 2, 3, 4, 1, 2, 3, 4, 1, 2], w - 1), ("b", [7, 8], w - 1)]
    ta, ma = tokens[:w], mask[: w * w].reshape(w, w)
    assert ta[0] == 2 and ta[1:3].tolist() == [3, 4]             # root, then the draft
    assert tokens[w] == 8 and (tokens[w:] == 8).all()          # b: nothing to draft, padding
    assert prop.steps == []                                    # no previous step to time
    # SGLang verifies and reports accepted drafts per request, in batch order
    target = np.full(w, -1)
    target[0], target[1] = 3, 4
    acc_a = len(accepted_path(ta, ma, target))
    worker.on_verify_complete_cpu([acc_a, 0], batch_size=2)
    fb = {f.key: (f.drafted, f.accepted) for f in prop.feedback}
    assert fb["a"][1] == 2 and fb["a"][0] >= 2 and fb["b"] == (0, 0)
    # a report that does not belong to a drafted step (a prefill batch) is ignored ...
    worker.on_verify_complete_cpu([0, 0, 0], batch_size=3)
    assert len(prop.feedback) == 2
    # b finishes; a drafts again. A prefill ran since the last drafts, so
    # that interval is not reported as a decode step
    b.finished_reason = object()
    a.output_ids.extend([3, 4])
    worker._prepare_draft_tokens(make_batch(a))
    assert prop.released == [("b", True)] and prop.steps == []
    worker.on_verify_complete_cpu([1], batch_size=1)
    (fa,) = prop.feedback[2:]
    assert fa.key == "a" and fa.drafted > 0 and fa.accepted == 1
    # a leaves without finishing (preempted); the step it was in is timed:
    # one row plus its draft nodes verified, as deep as its draft
    worker._prepare_draft_tokens(make_batch())
    assert prop.released == [("b", True), ("a", False)]
    ((n, depth, seconds),) = prop.steps
    assert n == 1 + fa.drafted and 1 <= depth <= fa.drafted and seconds >= 0
    # SGLang flushes its caches: live requests are released (once), and the
    # step around the flush is not timed although one report came in
    c = make_req("c", [5, 6, 5, 6, 5])
    worker._prepare_draft_tokens(make_batch(c))
    assert len(prop.steps) == 1                    # no report since the last drafts
    worker.on_verify_complete_cpu([0], batch_size=1)
    worker.clear_cache_pool()
    assert prop.released[-1] == ("c", False)
    worker._prepare_draft_tokens(make_batch(c))
    assert len(prop.steps) == 1 and prop.released.count(("c", False)) == 1
    worker.on_verify_complete_cpu([0], batch_size=1)
    worker._prepare_draft_tokens(make_batch(c))
    assert len(prop.steps) == 2                    # timed again after one plain step
    assert worker.batcher.num_errors == 0


def test_worker_survives_proposer_errors(sglang_plugins_loaded, caplog):
    from specpack.proposers.retrieval.suffix import SuffixProposer
    from specpack.sglang_plugins.worker import DraftBatcher

    w = 4
    prop = Recording(SuffixProposer(max_nodes=w - 1), fail_on="bad")
    batcher = DraftBatcher(prop, w, "suffix")
    reqs = [make_req("good", [1, 2, 1, 2, 1]), make_req("bad", [5, 6, 5, 6, 5])]
    with caplog.at_level(logging.ERROR, logger="specpack.sglang"):
        tokens, mask = batcher.drafts(reqs)
    assert batcher.num_errors >= 1 and "output stays correct" in caplog.text
    assert tokens[:w].tolist()[1] == 2            # the good request still drafts
    assert (tokens[w:] == 5).all()                 # the bad one: root + padding only
    bad_mask = mask[w * w:].reshape(w, w)
    assert bad_mask[:, 0].all() and (bad_mask.sum(1) == [1, 2, 2, 2]).all()
    assert ("bad", False) in prop.released         # rebuilt from its context next step


class Exploding(Proposer):
    """Raises in every hook a host calls; records which were called."""

    def __init__(self):
        self.calls = []

    def _boom(self, hook):
        self.calls.append(hook)
        raise RuntimeError(f"boom in {hook}")

    def propose(self, batch, stop_rule=NO_STOP):
        self._boom("propose")

    def observe(self, feedback):
        self._boom("observe")

    def observe_step(self, num_tokens, max_depth, seconds):
        self._boom("observe_step")

    def release(self, key, finished=True):
        self._boom("release")


def test_proposer_failing_in_every_hook_never_reaches_sglang(build_worker, caplog):
    w = 5
    worker = build_worker("SPECPACK_SUFFIX", width=w, wrap=lambda real: Exploding())
    prop, batcher = worker.batcher.proposer, worker.batcher
    a, b = make_req("a", [1, 2, 1, 2, 1]), make_req("b", [7, 8])

    def errors_after(step):
        before = batcher.num_errors
        step()
        return batcher.num_errors - before

    with caplog.at_level(logging.ERROR, logger="specpack.sglang"):
        out = []
        assert errors_after(lambda: out.append(worker._prepare_draft_tokens(make_batch(a, b)))) > 0
        ((tokens, mask),) = out
        assert tokens.tolist() == [1] * w + [8] * w          # root + padding for both
        for m in mask.reshape(2, w, w):
            assert m[:, 0].all() and (m.sum(1) == [1] + [2] * (w - 1)).all()
        assert {"propose", "release"} <= set(prop.calls)
        del prop.calls[:]
        assert errors_after(lambda: worker.on_verify_complete_cpu([0, 0], batch_size=2)) == 1
        assert prop.calls == ["observe"]
        b.finished_reason = object()                         # b leaves, a steps again (timed)
        del prop.calls[:]
        assert errors_after(lambda: worker._prepare_draft_tokens(make_batch(a))) >= 3
        assert {"observe_step", "release", "propose"} == set(prop.calls)
        del prop.calls[:]
        assert errors_after(worker.clear_cache_pool) == 1
        assert prop.calls == ["release"]
        assert batcher._live == {}
        tokens, _ = worker._prepare_draft_tokens(make_batch(a))
        assert tokens.tolist() == [1] * w
    records = [r for r in caplog.records if r.name == "specpack.sglang"
               and r.levelno >= logging.ERROR]
    assert len(records) == 1 and records[0].exc_info is not None   # logged once, counted after
    assert "boom in propose" in caplog.text


def test_unlayable_draft_costs_only_its_request(sglang_plugins_loaded):
    """A proposer breaking ``Draft.trusted``'s contract: that request is laid
    out empty and its feedback reports no draft. The step driver refuses the
    draft as malformed (non-integer ids) before layout."""
    from specpack.sglang_plugins.worker import DraftBatcher

    class Bad(Proposer):
        def __init__(self):
            self.feedback = []

        def propose(self, batch, stop_rule=NO_STOP):
            return [Draft.trusted(np.array(["x"]), np.array([-1], np.int32))
                    if v.key == "bad" else Draft.chain([9, 9]) for v in batch]

        def observe(self, feedback):
            self.feedback += list(feedback)

    w = 4
    prop = Bad()
    batcher = DraftBatcher(prop, w, "suffix")
    tokens, _ = batcher.drafts([make_req("good", [1, 2]), make_req("bad", [3, 4])])
    assert tokens.tolist() == [2, 9, 9, 2, 4, 4, 4, 4]
    assert batcher.driver.malformed == 1 and batcher.num_errors == 0
    batcher.verified([2, 0])
    # the refused request verified no draft: its feedback says so (0 drafted, 0 accepted)
    assert [(f.key, f.drafted, f.accepted) for f in prop.feedback] == [("good", 2, 2),
                                                                        ("bad", 0, 0)]
