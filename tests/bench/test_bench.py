"""`specpack bench`: workload/method validation, report arithmetic, and a tiny
end-to-end run per engine whose JSON is checked against its own raw data."""

import json
import subprocess
import sys

import pytest

from specpack.bench.methods import parse_methods
from specpack.bench.report import markdown, phase_row, summarise
from specpack.bench.workload import WorkloadError, load_workload


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_workload_validation(tmp_path):
    ok = write_jsonl(tmp_path / "ok.jsonl", [
        {"category": "a", "prompt": "x", "max_new_tokens": 3, "extra": 1}])
    assert load_workload(ok)[0].max_new_tokens == 3
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"category": "a", "prompt": "x", "max_new_tokens": 3},
        {"category": "a", "prompt": "x", "max_new_tokens": "3"}])
    with pytest.raises(WorkloadError, match=r"bad.jsonl:2: field 'max_new_tokens'"):
        load_workload(bad)
    with pytest.raises(WorkloadError, match="field 'prompt'"):
        load_workload(write_jsonl(tmp_path / "p.jsonl", [{"category": "a", "max_new_tokens": 1}]))
    with pytest.raises(WorkloadError, match="not found"):
        load_workload(tmp_path / "missing.jsonl")


def test_builtin_workload_has_the_four_categories():
    from specpack.bench.workload import BUILTIN_DIR

    reqs = load_workload(BUILTIN_DIR / "default.jsonl")
    assert {r.category for r in reqs} == {"copy_heavy", "open_generation", "multi_turn",
                                          "long_context"}


def test_methods_always_include_none_and_builtins():
    ms = [m.name for m in parse_methods("specpack:suffix", "vllm", None)]
    assert ms == ["none", "vllm:ngram", "specpack:suffix"]
    ms = [m.name for m in parse_methods("specpack:suffix", "vllm", "/d")]
    assert ms == ["none", "vllm:ngram", "vllm:draft_model", "specpack:suffix"]
    with pytest.raises(ValueError, match="allowed values: none, vllm:ngram"):
        parse_methods("specpack:medusa", "vllm", None)
    with pytest.raises(ValueError, match="needs --draft"):
        parse_methods("specpack:draft_model", "hf", None)


def phase(c, cat, wall, toks, accepted=0, drafts=0):
    return {"concurrency": c, "category": cat, "wall_s": wall,
            "spec": {"num_drafts": drafts, "num_accepted_tokens": accepted,
                     "accepted_per_pos": [accepted]},
            "requests": [{"tokens": t, "tpot_s": 0.01} for t in toks]}


def test_report_arithmetic():
    results = {
        "none": {"phases": [phase(1, "a", 2.0, [[1, 2, 3, 4]])]},
        "vllm:ngram": {"phases": [phase(1, "a", 1.0, [[1, 2, 3, 4]], accepted=2, drafts=1)]},
        "specpack:suffix": {"phases": [phase(1, "a", 0.5, [[1, 2, 3, 5]], accepted=3, drafts=1)]},
    }
    rows = {r["method"]: r for r in summarise(results, {"vllm:ngram"})}
    assert rows["none"]["tau"] == 1.0 and rows["none"]["speedup_vs_none"] == 1.0
    assert rows["vllm:ngram"]["tau"] == pytest.approx(4 / 2)
    assert rows["specpack:suffix"]["tau"] == pytest.approx(4 / 1)
    assert rows["specpack:suffix"]["speedup_vs_none"] == pytest.approx(4.0)
    assert rows["specpack:suffix"]["speedup_vs_best_builtin"] == pytest.approx(2.0)
    assert rows["specpack:suffix"]["greedy_match"] is False
    assert rows["vllm:ngram"]["greedy_match"] is True
    assert "| a | 1 | specpack:suffix | 4.00 |" in markdown(list(rows.values()))
    assert phase_row("x", False, phase(1, "a", 1.0, [[1]]))["tau"] == 1.0


def check_report(out_dir, expect_methods):
    doc = json.loads((out_dir / "bench.json").read_text())
    assert set(doc) == {"meta", "rows", "raw", "plots"}
    assert doc["meta"]["methods"] == expect_methods
    rows = doc["rows"]
    keys = {"method", "builtin", "concurrency", "category", "tau", "acceptance_by_position",
            "output_tok_s", "tpot_ms", "speedup_vs_none", "speedup_vs_best_builtin",
            "greedy_match", "wall_s", "output_tokens"}
    for r in rows:
        assert keys <= set(r)
        # every number is recomputed from the raw phase of the same run
        raw = next(p for p in doc["raw"][r["method"]]["phases"]
                   if p["concurrency"] == r["concurrency"] and p["category"] == r["category"])
        toks = sum(len(q["tokens"]) for q in raw["requests"])
        assert r["output_tokens"] == toks and r["wall_s"] == raw["wall_s"]
        assert r["output_tok_s"] == pytest.approx(toks / raw["wall_s"])
        base = next(x for x in rows if x["method"] == "none" and x["concurrency"] == r["concurrency"]
                    and x["category"] == r["category"])
        assert r["speedup_vs_none"] == pytest.approx(r["output_tok_s"] / base["output_tok_s"])
        assert r["greedy_match"], r
    for p in doc["plots"]:
        assert (out_dir / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| category | conc. | method |" in (out_dir / "bench.md").read_text()
    return doc


@pytest.fixture()
def tiny_workload(tmp_path):
    rows = []
    for cat, prompts in {"copy_heavy": ["def add(a, b):\n    return a + b\n" * 3,
                                         "for i in range(10):\n    print(i)\n" * 2],
                         "open_generation": ["class Stack:", "import os"]}.items():
        rows += [{"category": cat, "prompt": p, "max_new_tokens": 24} for p in prompts]
    return write_jsonl(tmp_path / "w.jsonl", rows)


@pytest.mark.engine
def test_bench_vllm_end_to_end(tiny_model_dir, tiny_workload, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "specpack.cli", "bench", "--engine", "vllm",
                        "--target", tiny_model_dir, "--methods", "specpack:suffix",
                        "--concurrency", "1,2", "--workload", str(tiny_workload),
                        "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    doc = check_report(out, ["none", "vllm:ngram", "specpack:suffix"])
    suffix = [x for x in doc["rows"] if x["method"] == "specpack:suffix"]
    assert len(suffix) == 4 and max(x["tau"] for x in suffix) > 1.2
    assert "bench vllm" in r.stderr  # progress bar


def test_bench_hf_end_to_end(tiny_model_dir, tiny_workload, tmp_path):
    from specpack.testing.tiny_models import build_tiny_llama

    draft = build_tiny_llama(tmp_path / "draft", seed=0)  # same weights: full acceptance
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "specpack.cli", "bench", "--engine", "hf",
                        "--target", tiny_model_dir, "--draft", str(draft),
                        "--methods", "specpack:suffix,specpack:draft_model",
                        "--concurrency", "1,2", "--workload", str(tiny_workload),
                        "--out", str(out), "--num-speculative-tokens", "4"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    doc = check_report(out, ["none", "specpack:suffix", "specpack:draft_model"])
    dm = [x for x in doc["rows"] if x["method"] == "specpack:draft_model"]
    assert min(x["tau"] for x in dm) > 3.0


def test_bench_rejects_bad_args(tmp_path):
    r = subprocess.run([sys.executable, "-m", "specpack.cli", "bench", "--methods", "x",
                        "--target", "/nonexistent", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "allowed values" in r.stderr
    r = subprocess.run([sys.executable, "-m", "specpack.cli", "bench", "--concurrency", "0",
                        "--target", "/x"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--concurrency" in r.stderr


def test_requests_longer_than_the_model_are_skipped(tiny_model_dir, capsys):
    from specpack.bench.run import fit_to_model
    from specpack.bench.workload import Request

    cats = {"short": [Request("short", "def f(x):", 16)],
            "long": [Request("long", "x = 1\n" * 5000, 16)]}
    kept, max_len, skipped = fit_to_model(cats, tiny_model_dir)
    assert list(kept) == ["short"] and skipped == {"long": 1}
    assert 16 < max_len <= 4096
    assert "skipping 1 'long' request(s)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no workload request fits"):
        fit_to_model({"long": cats["long"]}, tiny_model_dir)
