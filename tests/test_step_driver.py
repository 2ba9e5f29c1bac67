"""StepDriver: the step protocol shared by the vLLM, SGLang and reference hosts."""

import logging

import numpy as np
import pytest

from specpack.draft import Draft
from specpack.protocols import NO_STOP, Budget, Proposer, RequestView
from specpack.step_driver import StepDriver

LOG = logging.getLogger("specpack.test")


class Recorder(Proposer):
    """Drafts a chain of ``len(key)`` + 5 tokens; records every hook call."""

    def __init__(self, fail_on=(), fail_hooks=()):
        self.fail_on, self.fail_hooks = set(fail_on), set(fail_hooks)
        self.calls, self.feedback, self.steps, self.released, self.topk = [], [], [], [], []

    def _maybe_fail(self, hook):
        if hook in self.fail_hooks:
            raise RuntimeError(f"{hook} boom")

    def propose(self, batch, stop_rule=NO_STOP):
        self.calls.append([v.key for v in batch])
        self._maybe_fail("propose")
        if any(v.key in self.fail_on for v in batch):
            raise RuntimeError("bad request")
        return [Draft.chain(np.arange(5 + len(str(v.key)), dtype=np.int32)) for v in batch]

    def observe(self, feedback):
        self._maybe_fail("observe")
        self.feedback += list(feedback)

    def observe_step(self, n, depth, seconds):
        self._maybe_fail("observe_step")
        self.steps.append((n, depth, seconds))

    def release(self, key, finished=True):
        self._maybe_fail("release")
        self.released.append((key, finished))

    def observe_target_topk(self, tokens, topk):
        self._maybe_fail("observe_target_topk")
        self.topk.append(len(tokens))


def views(keys, budget=(4, 3)):
    return [RequestView(k, np.arange(6, dtype=np.int32), Budget(*budget)) for k in keys]


def test_drafts_are_trimmed_to_budget_and_zero_budgets_are_not_asked():
    p = Recorder()
    d = StepDriver(p, name="t", logger=LOG)
    out = d.propose(views(["a"], (4, 3)) + [RequestView("z", np.arange(3, dtype=np.int32),
                                                          Budget(0, 0))])
    assert [len(x) for x in out] == [3, 0]          # depth 3 wins over 4 nodes; z empty
    assert p.calls == [["a"]]                       # z never reached the proposer
    assert d.drafted("a") == 3 and d.drafted("z") == 0 and d.drafted("q") is None


def test_feedback_uses_the_drafted_count_and_clips_accepted():
    p = Recorder()
    d = StepDriver(p, name="t", logger=LOG)
    d.propose(views(["a", "bb"]))
    fb = d.observe([("a", 2), ("bb", 99), ("unknown", 1), ("a", -3)])
    assert [(f.key, f.drafted, f.accepted) for f in fb] == [
        ("a", 3, 2), ("bb", 3, 3), ("a", 3, 0)]
    assert p.feedback == fb
    d.propose(views(["bb"]))                        # "a" not in this step
    assert d.observe([("a", 1)]) == []


def test_step_time_is_the_interval_between_calls_and_untimed_skips_it():
    p = Recorder()
    d = StepDriver(p, name="t", logger=LOG)
    d.propose(views(["a", "bb"]), other_rows=3, now=10.0)
    d.propose(views(["a"]), now=10.5)
    assert p.steps == [(2 + 3 + 6, 3, 0.5)]         # rows + other rows + nodes, depth
    d.propose(views(["a"]), timed=False, now=11.0)  # e.g. a prefill ran in between
    assert len(p.steps) == 1
    d.untimed()
    d.propose(views(["a"]), now=12.0)
    assert len(p.steps) == 1
    d.propose(views(["a"]), now=12.25)
    assert p.steps[-1] == (1 + 3, 3, 0.25)


def test_one_bad_request_costs_only_its_own_drafts_and_is_logged_once(caplog):
    p = Recorder(fail_on={"bad"})
    d = StepDriver(p, name="t", logger=LOG)
    with caplog.at_level(logging.ERROR, logger="specpack.test"):
        for _ in range(3):
            out = d.propose(views(["a", "bad", "c"]))
            assert [len(x) for x in out] == [3, 0, 3]
    assert d.errors == 3
    assert ("bad", False) in p.released            # its state is dropped, rebuilt next time
    assert len([r for r in caplog.records if r.exc_info]) == 1


@pytest.mark.parametrize("hook", ["propose", "observe", "observe_step", "release",
                                  "observe_target_topk"])
def test_no_hook_failure_reaches_the_host(hook):
    p = Recorder(fail_hooks={hook})
    d = StepDriver(p, name="t", logger=LOG)
    for t in range(3):
        out = d.propose(views(["a"]), now=float(t))
        assert len(out) == 1 and len(out[0]) == (0 if hook == "propose" else 3)
        d.observe([("a", 1)])
        d.observe_target_topk(np.arange(3), np.zeros((3, 2), np.int64))
    d.release("a", finished=True)
    assert d.errors > 0


def test_raise_errors_surfaces_failures_for_tests():
    d = StepDriver(Recorder(fail_on={"bad"}), name="t", logger=LOG, raise_errors=True)
    with pytest.raises(RuntimeError, match="bad request"):
        d.propose(views(["bad"]))


def test_a_proposer_must_subclass_the_base_class():
    class Duck:
        def propose(self, batch):
            return []

    with pytest.raises(TypeError, match="does not subclass"):
        StepDriver(Duck(), name="t", logger=LOG)


def test_wrong_number_of_drafts_is_a_per_request_failure():
    class Short(Recorder):
        def propose(self, batch, stop_rule=NO_STOP):
            out = super().propose(batch)
            return out[:1]                          # one draft for the whole batch

    d = StepDriver(Short(), name="t", logger=LOG)
    out = d.propose(views(["a", "b"]))
    assert [len(x) for x in out] == [3, 3]          # retried per request: each gets its own
    assert d.errors == 0


def test_target_topk_is_declared_by_the_proposers_that_use_it():
    from specpack.registry import build_pipeline

    assert not Recorder().wants_target_topk
    assert not build_pipeline({}, method="suffix").wants_target_topk
    assert build_pipeline({}, method="token_recycling").wants_target_topk
    assert build_pipeline({}, method="cascade").wants_target_topk
    assert not build_pipeline({"sources": ["request", "global"]},
                              method="cascade").wants_target_topk
    assert build_pipeline({"policy": {"kind": "fixed"}},
                          method="token_recycling").wants_target_topk
