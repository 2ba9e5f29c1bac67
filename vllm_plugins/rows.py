"""Map vLLM's batch rows to stable request keys.

vLLM's ``custom_class`` hook calls ``propose(sampled_token_ids,
num_tokens_no_spec, token_ids_cpu)`` with rows in *batch order*: rows move
when requests finish (the batch is condensed), are preempted or resumed, and
two requests may hold identical tokens. Proposers keep per-request state, so
every row must be mapped to the request it belongs to. Two resolvers:

* :class:`RunnerRowResolver` reads request ids from the model runner that
  called the proposer (``runner.input_batch.req_ids``), used only when the
  runner's ``token_ids_cpu`` *is* the array passed to ``propose`` and the vLLM
  version is in the tested range. Exact: finished requests are those gone
  from ``runner.requests``; preempted ones stay there and keep their state.
* :class:`ContentRowResolver` needs nothing from vLLM: row ``i`` had
  ``L_i - s_i`` tokens at the previous step (``s_i`` = tokens sampled this
  step), so its previous fingerprint (length, first and last tokens) finds
  the key it had then, in O(1) per row. Identical requests share a
  fingerprint and are told apart as a multiset (their states are identical,
  so either assignment is correct). A request that disappears is reported
  as finished; if it was preempted it comes back under a new key and its
  state is rebuilt from its full context. Keys missing from a call are
  kept for a few calls and re-matched by checkpoint tokens (vLLM skips
  ``propose`` calls near ``max_model_len``) before they count as finished.

Either way the proposer validates the state against the row's tokens, so a
wrong mapping costs a rebuild, never a wrong output (verification is exact).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Hashable

import numpy as np

_FP_TAIL = 32
_FP_HEAD = 8


def fingerprint(row: np.ndarray, n: int) -> tuple:
    """Identity of the first ``n`` tokens of ``row`` for row matching."""
    return (n, row[:min(n, _FP_HEAD)].tobytes(), row[max(0, n - _FP_TAIL):n].tobytes())


@dataclass
class RowAssignment:
    """Result of resolving one ``propose`` call."""

    keys: list[Hashable | None]           # None: row is not decoding (prefill chunk)
    prompt_lens: list[int]                # -1 when unknown
    finished: list[Hashable] = field(default_factory=list)   # outputs complete
    dropped: list[Hashable] = field(default_factory=list)    # state no longer needed


def checkpoints(row: np.ndarray, n: int) -> tuple:
    """(position, token) samples of ``row[:n]``: first, last, and three interior."""
    return tuple((i, int(row[i])) for i in sorted({0, n // 4, n // 2, 3 * n // 4, n - 1}) if n)


class ContentRowResolver:
    """Request keys from row contents only (works on any vLLM version).

    A key that matches no row is kept for ``grace`` calls (vLLM skips whole
    ``propose`` calls, e.g. while a request is near ``max_model_len``) and can
    be re-matched by its checkpoints; after that it is reported finished.
    """

    def __init__(self, grace: int = 3) -> None:
        self.grace = grace
        self._by_fp: dict[tuple, list[int]] = {}
        self._info: dict[int, tuple[int, int, int, tuple]] = {}  # n, prompt_len, row, checks
        self._missing: dict[int, int] = {}
        self._ids = itertools.count()

    def _rematch(self, row: np.ndarray, n: int, candidates: list[int]) -> int | None:
        for key in candidates:
            n_k, _, _, checks = self._info[key]
            if n_k < n and all(int(row[i]) == t for i, t in checks):
                candidates.remove(key)
                return key
        return None

    def resolve(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu) -> RowAssignment:
        n_rows = len(sampled_token_ids)
        keys: list[Hashable | None] = [None] * n_rows
        old = self._by_fp
        unmatched = []
        # pass 1: the row's previous-step prefix has a known fingerprint
        for i, sampled in enumerate(sampled_token_ids):
            s = len(sampled)
            if s == 0:
                continue
            n = int(num_tokens_no_spec[i])
            bucket = old.get(fingerprint(token_ids_cpu[i], n - s))
            if bucket:  # prefer the key that sat in this row last step, else the oldest
                key = next((k for k in bucket if self._info[k][2] == i), bucket[0])
                bucket.remove(key)
                keys[i] = key
            else:
                unmatched.append(i)
        # pass 2: rows that advanced more than one step (skipped calls) or moved:
        # match them by checkpoints against keys not seen in this call
        candidates = [k for b in old.values() for k in b] + list(self._missing)
        for i in unmatched:
            n = int(num_tokens_no_spec[i])
            keys[i] = self._rematch(token_ids_cpu[i], n, candidates)
        new_by_fp: dict[tuple, list[int]] = {}
        prompt_lens: list[int] = []
        for i, sampled in enumerate(sampled_token_ids):
            if not sampled:
                prompt_lens.append(-1)
                continue
            n = int(num_tokens_no_spec[i])
            row = token_ids_cpu[i]
            key = keys[i]
            if key is None:
                key = keys[i] = next(self._ids)
                prompt = n - len(sampled)
            else:
                prompt = self._info[key][1]
                self._missing.pop(key, None)
            self._info[key] = (n, prompt, i, checkpoints(row, n))
            prompt_lens.append(prompt)
            new_by_fp.setdefault(fingerprint(row, n), []).append(key)
        for k in candidates:
            self._missing.setdefault(k, 0)
        finished = []
        for k in list(self._missing):
            self._missing[k] += 1
            if self._missing[k] >= self.grace:
                del self._missing[k]
                self._info.pop(k, None)
                finished.append(k)
        self._by_fp = new_by_fp
        return RowAssignment(keys, prompt_lens, finished=finished)


def find_runner(frame: Any, token_ids_cpu: np.ndarray | None = None, depth: int = 3):
    """Return the vLLM model runner among the caller frames, or None.

    A runner is recognised by duck typing (``input_batch.req_ids``,
    ``requests``); with ``token_ids_cpu`` it must also own that very array.
    """
    for _ in range(depth):
        if frame is None:
            return None
        obj = frame.f_locals.get("self")
        batch = getattr(obj, "input_batch", None)
        if batch is not None and hasattr(batch, "req_ids") and hasattr(obj, "requests"):
            if token_ids_cpu is None or getattr(batch, "token_ids_cpu", None) is token_ids_cpu:
                return obj
        frame = frame.f_back
    return None


class RunnerRowResolver:
    """Request keys read from the calling vLLM model runner (exact)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self._active: set[Hashable] = set()
        self._parked: set[Hashable] = set()

    def owns(self, token_ids_cpu: np.ndarray, num_rows: int) -> bool:
        batch = self.runner.input_batch
        return batch.token_ids_cpu is token_ids_cpu and len(batch.req_ids) >= num_rows

    def resolve(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu) -> RowAssignment:
        batch = self.runner.input_batch
        live = self.runner.requests
        req_ids = batch.req_ids
        num_prompt = batch.num_prompt_tokens
        keys: list[Hashable | None] = []
        prompt_lens: list[int] = []
        seen = set()
        for i, sampled in enumerate(sampled_token_ids):
            rid = req_ids[i]
            if rid is not None:
                seen.add(rid)
            if not sampled or rid is None:
                keys.append(None)
                prompt_lens.append(-1)
                continue
            keys.append(rid)
            prompt_lens.append(int(num_prompt[i]))
        finished, dropped = [], []
        for rid in (self._active | self._parked) - seen:
            if rid not in live:
                finished.append(rid)
                self._parked.discard(rid)
            else:
                self._parked.add(rid)  # preempted / not scheduled: keep its state
        self._parked -= seen
        # every request in the batch, drafting or not (a request re-prefilling
        # after preemption has no sampled tokens but still owns a state)
        self._active = seen
        return RowAssignment(keys, prompt_lens, finished=finished, dropped=dropped)
