"""Validation before start: one path (``specpack.registry.validate_pipeline``)
for ``specpack check-config``, vLLM's plugin argv check and SGLang's settings
file; what can fail later is checked now, and errors name the field."""

import json

import pytest

from specpack.cli import main
from specpack.config import ConfigError
from specpack.sglang_plugins.settings import load_settings
from specpack.vllm_plugins.plugin import validate_engine_args


def check(cls, extra, capsys=None):
    spec = json.dumps({"model": f"specpack.vllm_plugins.{cls}", "num_speculative_tokens": 4})
    main(["check-config", "--speculative-config", spec, "--additional-config",
          extra if isinstance(extra, str) else json.dumps(extra)])


@pytest.fixture
def datastore(tmp_path):
    from specpack.proposers.retrieval.corpus_index import build_datastore

    build_datastore([[5, 6, 7, 8] * 10], tmp_path / "ds")
    return str(tmp_path / "ds")


def test_ok_for_existing_files(capsys, tiny_model_dir, datastore):
    check("CorpusDatastore", {"specpack": {"datastore_path": datastore}})
    check("DraftModel", {"specpack": {"draft_model": tiny_model_dir}})
    check("RetrievalCascade", {"specpack": {"datastore": {"datastore_path": datastore}}})
    assert capsys.readouterr().out.count("ok: specpack method") == 3


@pytest.mark.parametrize("cls,extra,match", [
    ("CorpusDatastore", {"specpack": {"datastore_path": "/nonexistent/ds"}},
     "field 'datastore_path' = '/nonexistent/ds': not a datastore"),
    ("DraftModel", {"specpack": {"draft_model": "/nonexistent/draft"}},
     "field 'draft_model' = '/nonexistent/draft': no such directory"),
    ("RetrievalCascade", {"specpack": {"datastore": {"datastore_path": "./nope"}}},
     "specpack: datastore: field 'datastore_path' = './nope'"),
    ("RASD", {"specpack": {"draft_model": "/nonexistent/d"}}, "field 'draft_model'"),
    ("SuffixDecoding", {"specpack": {"policy": {"kind": "ucb", "arms": [
        {"num_tokens": 2}, {"num_tokens": 3, "proposer": {"method": "draft_model",
                                                          "draft_model": "/no/such"}}]}}},
     r"arms\[1\].proposer: field 'draft_model' = '/no/such'"),
    ("SuffixDecoding", '{"specpack": [1, 2]}', "field 'specpack' must be a JSON object, got list"),
    ("SuffixDecoding", '[1]', "--additional-config must be a JSON object, got list"),
    ("SuffixDecoding", '{"specpack": ', "--additional-config is not valid JSON"),
])
def test_invalid_before_any_engine_starts(cls, extra, match):
    with pytest.raises(SystemExit, match=match):
        check(cls, extra)


def test_draft_model_directory_without_a_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="has no config.json"):
        check("DraftModel", {"specpack": {"draft_model": str(tmp_path)}})


def test_hub_ids_pass_unless_the_hub_is_off(monkeypatch):
    validate_engine_args({"model": "specpack.vllm_plugins.DraftModel",
                          "num_speculative_tokens": 2},
                         {"specpack": {"draft_model": "org/draft-model"}})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="no such directory"):
        validate_engine_args({"model": "specpack.vllm_plugins.DraftModel",
                              "num_speculative_tokens": 2},
                             {"specpack": {"draft_model": "org/draft-model"}})


def test_field_errors_come_before_file_errors():
    with pytest.raises(ConfigError, match="unknown field 'typo'"):
        validate_engine_args({"model": "specpack.vllm_plugins.CorpusDatastore",
                              "num_speculative_tokens": 2},
                             {"specpack": {"datastore_path": "/nope", "typo": 1}})


def test_sglang_settings_file_takes_the_same_path(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"datastore_path": "/nonexistent/ds"}))
    with pytest.raises(ConfigError, match="field 'datastore_path' = '/nonexistent/ds'"):
        load_settings("SPECPACK_DATASTORE", 16, environ={"SPECPACK_SGLANG_CONFIG": str(f)})
    f.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object, got list"):
        load_settings("SPECPACK_SUFFIX", 16, environ={"SPECPACK_SGLANG_CONFIG": str(f)})
