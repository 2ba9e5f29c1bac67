import pytest

from specpack.config import ConfigError, SuffixConfig, parse_method_config
from specpack.registry import build_proposer


def err(raw, **kw):
    with pytest.raises(ConfigError) as e:
        parse_method_config(raw, **kw)
    return str(e.value)


def test_defaults_match_vllm_upstream_suffix():
    c = parse_method_config({}, default_method="suffix")
    assert isinstance(c, SuffixConfig)
    assert c.suffix_decoding_max_tree_depth == 24
    assert c.suffix_decoding_max_cached_requests == 10000
    assert c.suffix_decoding_max_spec_factor == 1.0
    assert c.suffix_decoding_min_token_prob == 0.1


def test_unknown_key_names_field_and_allowed():
    msg = err({"suffix_decoding_max_depth": 3}, default_method="suffix")
    assert "unknown field 'suffix_decoding_max_depth'" in msg
    assert "suffix_decoding_max_tree_depth" in msg  # allowed fields listed


def test_wrong_type():
    msg = err({"suffix_decoding_max_tree_depth": "24"}, default_method="suffix")
    assert "'suffix_decoding_max_tree_depth'" in msg and "integer" in msg
    assert "allowed: int >= 2 and <= 512" in msg
    msg = err({"suffix_decoding_min_token_prob": True}, default_method="suffix")
    assert "'suffix_decoding_min_token_prob'" in msg


@pytest.mark.parametrize("field,value,bound", [
    ("suffix_decoding_min_token_prob", 1.5, "<= 1.0"),
    ("suffix_decoding_min_token_prob", -0.1, ">= 0.0"),
    ("suffix_decoding_max_tree_depth", 0, ">= 2"),
    ("suffix_decoding_max_spec_factor", -1.0, ">= 0.0"),
    ("suffix_decoding_max_cached_requests", -1, ">= 0"),
    ("max_active_requests", 0, ">= 1"),
])
def test_out_of_range(field, value, bound):
    msg = err({field: value}, default_method="suffix")
    assert f"'{field}'" in msg and repr(value) in msg and bound in msg


def test_degenerate_values_rejected():
    assert "'suffix_decoding_max_tree_depth'" in err({"suffix_decoding_max_tree_depth": 1},
                                                   default_method="suffix")
    for bad in (float("inf"), float("nan"), 1e30):
        assert "'suffix_decoding_max_spec_factor'" in err(
            {"suffix_decoding_max_spec_factor": bad}, default_method="suffix")
    msg = err({"method": ["suffix"]})
    assert "field 'method'" in msg and "must be a string" in msg


def test_unknown_and_conflicting_method():
    msg = err({"method": "medusa"})
    assert "'method'" in msg and "'medusa'" in msg and "allowed values: cascade, datastore, draft_model, rasd, suffix, token_recycling" in msg
    assert "required" in err({})
    msg = err({"method": "nope"}, default_method="suffix")
    assert "allowed values: cascade, datastore, draft_model, rasd, suffix, token_recycling" in msg
    msg = err({"method": "draft_model"}, default_method="suffix")
    assert "conflicts with the entry point" in msg
    msg = err({"method": "draft_model"})
    assert "'draft_model'" in msg and "required" in msg.lower()


def test_not_an_object():
    assert "JSON object" in err([1, 2])


def test_registry_builds_proposer():
    p = build_proposer({"suffix_decoding_max_tree_depth": 8}, method="suffix", max_nodes=5)
    assert p.max_depth == 8 and p.max_nodes == 5
