"""Conformance of the method table (specpack/methods.py), every row.

In the spirit of SGLang's conformance check at algorithm registration:
every row is complete and importable, its declared capabilities match its
config and its proposer class, every list derived from the table agrees
with it, every method runs through ``specpack generate`` on the tiny test
model with output identical to plain decoding, and every vLLM class builds
from a config.
"""

import inspect
import json
import re
from types import SimpleNamespace
from typing import Literal

import numpy as np
import pytest

from specpack import methods as M
from specpack.config import ConfigError, MethodConfig, SuffixConfig
from specpack.protocols import Proposer

ROWS = list(M.METHODS.values())
IDS = [s.name for s in ROWS]


def test_table_is_not_empty_and_names_match_configs():
    assert len(ROWS) >= 6
    for s in ROWS:
        assert s.config.model_fields["method"].default == s.name


@pytest.mark.parametrize("spec", ROWS, ids=IDS)
def test_row_is_complete_and_importable(spec):
    cls = spec.proposer_class()
    assert inspect.isclass(cls) and issubclass(cls, Proposer), spec.proposer
    assert cls.__module__.startswith(f"specpack.proposers.{spec.family}."), cls.__module__
    # the module names its paper and rule, as every proposer module must
    assert len(inspect.getmodule(cls).__doc__ or "") > 100
    # propose takes the stop rule (null object by default)
    params = inspect.signature(cls.propose).parameters
    assert "stop_rule" in params and params["stop_rule"].default is not inspect.Parameter.empty
    for field, info in spec.config.model_fields.items():
        assert info.description or field == "method", f"{spec.name}.{field} has no description"


class XConfig(SuffixConfig):
    method: Literal["x_method"] = "x_method"


def test_registration_refuses_inconsistent_rows():
    good = dict(name="x_method", family="retrieval", config=XConfig,
                proposer="specpack.proposers.retrieval.suffix:SuffixProposer", summary="s")
    cases = [
        (dict(good, config=SuffixConfig), "field 'config'.*'suffix', not 'x_method'"),
        (dict(good, name="suffix", config=SuffixConfig), "registered twice"),
        (dict(good, name="Bad-Name"), "lower_snake_case"),
        (dict(good, family="nope"), "field 'family'"),
        (dict(good, config=dict), "MethodConfig subclass"),
        (dict(good, proposer="os.path:join"), "field 'proposer'"),
        (dict(good, proposer="specpack.proposers.model.draft_model:DraftModelProposer"),
         "field 'proposer'"),                                   # not in its family's folder
        (dict(good, summary=""), "field 'summary'"),
        (dict(good, needs_datastore=True), "field 'needs_datastore'"),
        (dict(good, needs_draft_model=True), "field 'needs_draft_model'"),
        (dict(good, vllm_class="SuffixDecoding"), "'SuffixDecoding' is taken"),
        (dict(good, vllm_class="lower"), "field 'vllm_class'"),
        (dict(good, sglang_algorithm="SPECPACK_SUFFIX"), "'SPECPACK_SUFFIX' is taken"),
        (dict(good, sglang_algorithm="specpack_lower"), "field 'sglang_algorithm'"),
        (dict(good, sglang_algorithm="SPECPACK_X", needs_target=True),
         "only model-free methods"),
    ]
    before = dict(M.METHODS)
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            M.register(M.MethodSpec(**kwargs))
    assert M.METHODS == before
    # the good row itself is accepted (so the refusals above are about their field)
    M.register(M.MethodSpec(**good))
    try:
        assert M.METHODS["x_method"].proposer_class() is M.METHODS["suffix"].proposer_class()
    finally:
        del M.METHODS["x_method"]


def test_derived_lists_follow_the_table():
    from specpack.bench.methods import NEEDS_DATASTORE, NEEDS_DRAFT, SPECPACK
    from specpack.sglang_plugins.names import ALGORITHMS
    from specpack.vllm_plugins import __all__ as vllm_exports
    from specpack.vllm_plugins.names import PROPOSER_METHODS

    assert PROPOSER_METHODS == {s.vllm_class: s.name for s in ROWS if s.vllm_class}
    assert set(PROPOSER_METHODS) <= set(vllm_exports)
    assert ALGORITHMS == {s.sglang_algorithm: s.name for s in ROWS if s.sglang_algorithm}
    assert set(SPECPACK["hf"]) == {f"specpack:{s.name}" for s in ROWS}
    assert set(SPECPACK["vllm"]) == {f"specpack:{s.name}" for s in ROWS if s.vllm_class}
    assert {n for n in NEEDS_DRAFT if n.startswith("specpack:")} == {
        f"specpack:{s.name}" for s in ROWS if s.needs_draft_model}
    assert set(NEEDS_DATASTORE) == {f"specpack:{s.name}" for s in ROWS if s.needs_datastore}


def test_cli_lists_and_accepts_every_method(capsys):
    from specpack.cli import main

    main(["methods"])
    out = capsys.readouterr().out
    for s in ROWS:
        assert re.search(rf"^{s.name} \({s.family}\)", out, re.M), s.name
        if s.vllm_class:
            assert f"specpack.vllm_plugins.{s.vllm_class}" in out
    with pytest.raises(SystemExit):
        main(["generate", "--target", "x", "--method", "no_such_method", "--prompt", "p"])
    assert "invalid choice" in capsys.readouterr().err


# --------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_datastore(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer

    from specpack.proposers.retrieval.corpus_index import build_datastore
    from specpack.testing.tiny_models import CORPUS

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp_path_factory.mktemp("ds") / "ds"
    build_datastore([tok(t, add_special_tokens=False).input_ids for t in CORPUS], out)
    return str(out)


def _generate(capsys, model_dir, method, *extra):
    from specpack.cli import main

    main(["generate", "--target", model_dir, "--method", method, "--prompt",
          "def fibonacci(n):\n    if n < 2:", "--prompt", "for i in range(10):",
          "--max-new-tokens", "24", *extra])
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("--- statistics ---") + len("--- statistics ---"):])
    return out[: out.index("--- statistics ---")], stats


@pytest.mark.parametrize("spec", ROWS, ids=IDS)
def test_every_method_runs_through_specpack_generate(spec, capsys, tiny_model_dir,
                                                     tiny_datastore):
    plain, plain_stats = _generate(capsys, tiny_model_dir, "none")
    extra = []
    if spec.needs_draft_model:
        extra += ["--draft", tiny_model_dir]         # the target drafting for itself
    if spec.needs_datastore:
        extra += ["--datastore", tiny_datastore]
    text, stats = _generate(capsys, tiny_model_dir, spec.name, *extra)
    assert text == plain                               # lossless through the CLI
    assert stats["method"] == spec.name
    assert stats["generated_tokens"] == plain_stats["generated_tokens"] == 48
    assert stats["target_forwards"] <= plain_stats["target_forwards"]
    assert stats["drafted"] > 0, stats


def test_generate_names_a_missing_flag(capsys, tiny_model_dir):
    with pytest.raises(SystemExit, match="needs --datastore PATH"):
        _generate(capsys, tiny_model_dir, "datastore")
    with pytest.raises(SystemExit, match="needs --draft PATH"):
        _generate(capsys, tiny_model_dir, "draft_model")


@pytest.mark.parametrize("spec", [s for s in ROWS if s.vllm_class], ids=lambda s: s.vllm_class)
def test_every_vllm_class_builds_from_a_config(spec, tiny_model_dir, tiny_datastore):
    import specpack.vllm_plugins as vp

    settings = {}
    if spec.needs_draft_model:
        settings["draft_model"] = tiny_model_dir
    if spec.needs_datastore:
        settings["datastore_path"] = tiny_datastore
    cls = getattr(vp, spec.vllm_class)
    assert cls.method == spec.name and cls.__name__ == spec.vllm_class
    assert cls.__module__ == "specpack.vllm_plugins.proposer"
    cfg = SimpleNamespace(speculative_config=SimpleNamespace(num_speculative_tokens=4),
                          model_config=SimpleNamespace(max_model_len=512),
                          additional_config={"specpack": settings})
    adapter = cls(cfg)
    assert isinstance(adapter.proposer, spec.proposer_class())
    adapter.load_model(object())                   # vLLM hands the target module
    # one decode step of one request through the adapter (content row matching)
    adapter._read_internals = False
    ids = np.zeros((1, 64), np.int32)
    ids[0, :12] = [5, 6, 7, 8] * 3
    out = adapter.propose([[8]], np.array([12]), ids)
    assert len(out) == 1 and len(out[0]) <= 4 and adapter.num_errors == 0
    with pytest.raises(ConfigError, match="unknown field 'no_such_setting'"):
        cls(SimpleNamespace(**{**vars(cfg), "additional_config": {
            "specpack": {**settings, "no_such_setting": 1}}}))


def test_config_classes_are_method_configs():
    for s in ROWS:
        assert issubclass(s.config, MethodConfig)
