"""The vLLM adapter against simulated engine steps: shuffled rows, finishing,
joining, identical prompts, preemption, partial prefills and proposer faults.

The adapter's drafts must equal those of a reference SuffixProposer that is
told the true request ids."""

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from specpack.protocols import NO_STOP, Budget, RequestView
from specpack.proposers.retrieval.suffix import SuffixProposer
from specpack.vllm_plugins import SuffixDecoding
from specpack.vllm_plugins.rows import ContentRowResolver, RunnerRowResolver

K = 6
WIDTH = 700


def vllm_config(k=K, max_model_len=4096, specpack=None):
    return SimpleNamespace(
        speculative_config=SimpleNamespace(num_speculative_tokens=k),
        model_config=SimpleNamespace(max_model_len=max_model_len),
        additional_config={"specpack": specpack or {}},
    )


def make_stream(rng, prompt, length):
    """Tokens that mostly walk a short random cycle, with random slips."""
    cyc = rng.integers(0, 40, size=int(rng.integers(3, 9)))
    out = list(prompt)
    j = 0
    while len(out) < length:
        out.append(int(cyc[j % cyc.size]) if rng.random() > 0.1 else int(rng.integers(0, 40)))
        j += 1
    return np.asarray(out, np.int32)


class Sim:
    """Drives a proposer the way vLLM's model runner does."""

    def __init__(self, adapter, rng):
        self.adapter = adapter
        self.rng = rng
        self.ref = SuffixProposer(adapter.proposer.config, max_nodes=K)
        self.streams, self.prompt_len, self.pos, self.draft = {}, {}, {}, {}
        self.next_id = 0
        self.grace = adapter._content_resolver.grace
        self.releasing: dict[str, int] = {}  # rid -> calls since it vanished

    def add(self, prompt, stream=None, length=200):
        rid = f"req-{self.next_id}"
        self.next_id += 1
        self.streams[rid] = stream if stream is not None else make_stream(self.rng, prompt, length)
        self.prompt_len[rid] = len(prompt)
        self.pos[rid] = None  # not prefilled yet
        return rid

    def advance(self, rid):
        """Apply verification of the previous draft; return sampled tokens."""
        s = self.streams[rid]
        if self.pos[rid] is None:
            self.pos[rid] = self.prompt_len[rid] + 1
            return [int(s[self.prompt_len[rid]])]
        p = self.pos[rid]
        acc = 0
        for t in self.draft.get(rid, []):
            if p + acc < s.size and s[p + acc] == t:
                acc += 1
            else:
                break
        n = min(acc + 1, s.size - p)
        self.pos[rid] = p + n
        return s[p:p + n].tolist()

    def tick(self):
        """Content mode reports a vanished request finished after `grace` calls."""
        for rid in list(self.releasing):
            self.releasing[rid] += 1
            if self.releasing[rid] == self.grace:
                del self.releasing[rid]
                self.ref.release(rid)

    def step(self, order, prefilling=()):
        self.tick()
        token_ids = np.zeros((len(order) + 2, WIDTH), np.int32)
        sampled, num = [], np.zeros(len(order) + 2, np.int32)
        for i, rid in enumerate(order):
            if rid in prefilling:
                sampled.append([])
                num[i] = self.prompt_len[rid] // 2
                token_ids[i, : num[i]] = self.streams[rid][: num[i]]
                continue
            sampled.append(self.advance(rid))
            num[i] = self.pos[rid]
            token_ids[i, : num[i]] = self.streams[rid][: num[i]]
        out = self.adapter.propose(sampled, num, token_ids)
        assert len(out) == len(order)
        for i, rid in enumerate(order):
            if rid in prefilling:
                assert out[i] == []
                continue
            n = self.pos[rid]
            view = RequestView(rid, self.streams[rid][:n], Budget(K, K),
                               num_prompt_tokens=self.prompt_len[rid])
            expect = self.ref.propose([view])[0].best_path_tokens()[:K].tolist()
            assert out[i] == expect, (rid, n)
            assert len(out[i]) <= K
            self.draft[rid] = out[i]
        return out

    def finish(self, rid):
        self.releasing[rid] = 0
        del self.streams[rid]

    def done(self, rid):
        return self.pos[rid] is not None and self.pos[rid] >= self.streams[rid].size - 1


def test_content_mode_shuffles_finishes_joins_identical_prompts():
    rng = np.random.default_rng(0)
    adapter = SuffixDecoding(vllm_config())
    adapter._read_internals = False  # force content matching (no runner)
    sim = Sim(adapter, rng)
    shared = rng.integers(0, 40, size=30).tolist()
    twin_stream = make_stream(rng, shared, 150)
    live = [sim.add(shared, twin_stream), sim.add(shared, twin_stream.copy()),  # identical
            sim.add(shared), sim.add(shared)]  # identical prompt, different continuation
    live += [sim.add(rng.integers(0, 40, size=int(rng.integers(5, 60))).tolist())
             for _ in range(4)]
    steps = 0
    total_drafted = 0
    while live and steps < 400:
        order = list(live)
        rng.shuffle(order)
        prefill = {order[0]} if steps % 7 == 3 and sim.pos[order[0]] is None else set()
        out = sim.step(order, prefilling=prefill)
        total_drafted += sum(len(o) for o in out)
        for rid in list(live):
            if sim.done(rid):
                live.remove(rid)
                sim.finish(rid)
        if steps % 15 == 0 and sim.next_id < 20:
            live.append(sim.add(rng.integers(0, 40, size=20).tolist()))
        steps += 1
    assert not live and total_drafted > 200
    assert adapter.num_errors == 0
    # finished outputs reached the global cache (the adapter learns of the
    # last finishes `grace` calls later, here empty batches)
    for _ in range(sim.grace):
        assert adapter.propose([], np.zeros(0, np.int32), np.zeros((0, WIDTH), np.int32)) == []
        sim.tick()
    assert len(adapter.proposer.global_cache) == len(sim.ref.global_cache) > 0


class FakeInputBatch:
    def __init__(self, width=WIDTH, rows=16):
        self.token_ids_cpu = np.zeros((rows, width), np.int32)
        self.req_ids = []
        self.num_prompt_tokens = np.zeros(rows, np.int32)


class FakeRunner:
    """Mimics the attributes of vLLM's GPUModelRunner the resolver reads."""

    def __init__(self, drafter):
        self.input_batch = FakeInputBatch()
        self.requests = {}
        self.drafter = drafter

    def load_model(self):
        self.drafter.load_model(None)

    def propose_draft_token_ids(self, sampled, num):
        return self.drafter.propose(sampled, num, self.input_batch.token_ids_cpu)


def test_runner_mode_uses_request_ids_and_keeps_preempted_state():
    adapter = SuffixDecoding(vllm_config())
    runner = FakeRunner(adapter)
    runner.load_model()
    assert isinstance(adapter._runner_resolver, RunnerRowResolver)
    rng = np.random.default_rng(1)
    streams = {r: make_stream(rng, [1, 2, 3], 120) for r in ("a", "b", "c")}
    pos = {r: 10 for r in streams}

    def run(order):
        b = runner.input_batch
        b.req_ids = list(order)
        num = np.zeros(len(order), np.int32)
        for i, r in enumerate(order):
            pos[r] += 1
            num[i] = pos[r]
            b.token_ids_cpu[i, : pos[r]] = streams[r][: pos[r]]
            b.num_prompt_tokens[i] = 3
        return runner.propose_draft_token_ids([[1]] * len(order), num)

    runner.requests = {r: object() for r in streams}
    run(["a", "b", "c"])
    state_c = adapter.proposer.states["c"]
    run(["b", "a"])          # c preempted: still in runner.requests
    run(["a", "b"])
    assert "c" in adapter.proposer.states
    run(["c", "a", "b"])     # resumed: same state object, extended in place
    assert adapter.proposer.states["c"] is state_c
    del runner.requests["b"]  # b finished
    run(["c", "a"])
    assert "b" not in adapter.proposer.states
    assert len(adapter.proposer.global_cache) == 1
    assert adapter.proposer.states["a"].prompt_len == 3


def test_runner_mode_releases_request_finished_during_reprefill():
    adapter = SuffixDecoding(vllm_config())
    runner = FakeRunner(adapter)
    runner.load_model()
    b = runner.input_batch
    b.req_ids = ["a"]
    b.token_ids_cpu[0, :6] = [1, 2, 3, 1, 2, 3]
    b.num_prompt_tokens[0] = 3
    runner.requests = {"a": 1}
    runner.propose_draft_token_ids([[3]], np.array([6]))
    assert "a" in adapter.proposer.states
    runner.propose_draft_token_ids([[]], np.array([6]))   # preempted, re-prefilling
    del runner.requests["a"]                               # aborted before decoding again
    b.req_ids = []
    runner.propose_draft_token_ids([], np.array([], np.int32))
    assert "a" not in adapter.proposer.states and adapter.driver.drafted("a") is None


def test_runner_ignored_when_it_does_not_own_the_array():
    adapter = SuffixDecoding(vllm_config())
    runner = FakeRunner(adapter)
    runner.load_model()
    other = np.zeros((2, WIDTH), np.int32)
    other[0, :4] = [5, 6, 5, 6]
    out = adapter.propose([[6]], np.array([4]), other)  # not the runner's array
    assert out == [[5, 6]]


def test_content_resolver_unit():
    r = ContentRowResolver()
    ids = np.zeros((3, 50), np.int32)
    ids[0, :5] = [1, 2, 3, 4, 5]
    ids[1, :5] = [1, 2, 3, 4, 5]
    a = r.resolve([[5], [5]], np.array([5, 5]), ids)
    assert a.keys[0] != a.keys[1] and a.prompt_lens == [4, 4]
    ids[[0, 1]] = ids[[1, 0]]
    ids[0, 5:7] = [6, 7]
    ids[1, 5] = 9
    b = r.resolve([[6, 7], [9]], np.array([7, 6]), ids)
    assert set(b.keys) == set(a.keys) and b.finished == []
    row0 = np.r_[ids[0, :7], 8, 9, 10, np.zeros(40, np.int32)][None].astype(np.int32)
    finished = []
    for n in (8, 9, 10):  # the second request is gone: finished after `grace` calls
        c = r.resolve([[int(row0[0, n - 1])]], np.array([n]), row0)
        assert c.keys == [b.keys[0]]
        finished += c.finished
    assert finished == [b.keys[1]]


def test_content_resolver_survives_skipped_calls():
    """vLLM skips propose() for the whole batch near max_model_len: rows
    advance without a call; keys must be re-matched, not reported finished."""
    r = ContentRowResolver()
    ids = np.zeros((2, 60), np.int32)
    ids[0, :10] = np.arange(10)
    ids[1, :10] = np.arange(10) + 100
    a = r.resolve([[9], [109]], np.array([10, 10]), ids)
    ids[0, 10:14] = [1, 2, 3, 4]
    ids[1, 10:14] = [5, 6, 7, 8]
    b = r.resolve([[4], [8]], np.array([14, 14]), ids)  # two steps happened in between
    assert b.keys == a.keys and b.finished == [] and b.prompt_lens == [9, 9]


def test_content_mode_same_prefix_and_suffix_different_middle():
    """Two requests with equal length, first 8 and last 32 tokens but different
    middles swap rows: each row must still draft from its own content."""
    adapter = SuffixDecoding(vllm_config(k=4))
    adapter._read_internals = False
    head, tail = list(range(1, 9)), list(range(200, 232))
    mid_a = [50, 51, 52, 53, 50, 51, 52, 53]
    mid_b = [60, 61, 62, 63, 60, 61, 62, 63]
    a = np.array(head + mid_a + tail + [50, 51], np.int32)
    b = np.array(head + mid_b + tail + [60, 61], np.int32)
    tail_tok = [int(a[-1]), int(b[-1])]
    ids = np.zeros((2, 100), np.int32)
    ids[0, :a.size], ids[1, :b.size] = a, b
    n = np.array([a.size, b.size])
    adapter.propose([[tail_tok[0]], [tail_tok[1]]], n, ids)
    # both get the same next token, then swap rows
    a2, b2 = np.r_[a, 52], np.r_[b, 62]
    ids[0, :a2.size], ids[1, :b2.size] = b2, a2
    out = adapter.propose([[62], [52]], n + 1, ids)
    assert out[0][0] == 63 and not set(out[0]) & set(mid_a)
    assert out[1][0] == 53 and not set(out[1]) & set(mid_b)


class Exploding(SuffixProposer):
    def propose(self, batch, stop_rule=NO_STOP):
        if any(v.key == "bad" for v in batch):
            raise RuntimeError("boom")
        return super().propose(batch)


def test_proposer_exception_gives_no_drafts_and_logs_once(caplog):
    adapter = SuffixDecoding(vllm_config())
    adapter.driver.proposer = Exploding(adapter.proposer.config, max_nodes=K)
    runner = FakeRunner(adapter)
    runner.load_model()
    b = runner.input_batch
    b.req_ids = ["bad", "good"]
    runner.requests = {"bad": 1, "good": 1}
    ctx = [7, 8, 9, 7, 8, 9, 7, 8]
    b.token_ids_cpu[0, :8] = ctx
    b.token_ids_cpu[1, :8] = ctx
    with caplog.at_level(logging.ERROR, logger="specpack.vllm"):
        for _ in range(3):
            out = runner.propose_draft_token_ids([[8], [8]], np.array([8, 8]))
            assert out[0] == [] and out[1][:2] == [9, 7]
    assert adapter.num_errors == 3
    assert len([r for r in caplog.records if "boom" in (r.exc_text or "")]) == 1


def test_respects_max_model_len_and_k():
    adapter = SuffixDecoding(vllm_config(k=3, max_model_len=12))
    adapter._read_internals = False
    ids = np.zeros((1, 20), np.int32)
    ids[0, :10] = [1, 2, 1, 2, 1, 2, 1, 2, 1, 2]
    assert adapter.propose([[2]], np.array([8]), ids) == [[1, 2, 1]]   # k caps
    assert adapter.propose([[1, 2]], np.array([10]), ids) == [[1]]      # 12 - 10 - 1
    ids[0, 10] = 1
    assert adapter.propose([[1]], np.array([11]), ids) == [[]]


def test_bad_additional_config_fails_in_constructor():
    from specpack.config import ConfigError

    with pytest.raises(ConfigError, match="suffix_decoding_min_token_prob"):
        SuffixDecoding(vllm_config(specpack={"suffix_decoding_min_token_prob": 2}))
    with pytest.raises(ConfigError, match="'specpack' must be a JSON object"):
        SuffixDecoding(SimpleNamespace(**{**vars(vllm_config()), "additional_config": {"specpack": 3}}))
