import json
import logging
import subprocess
import sys

import pytest

from specpack.config import ConfigError
from specpack.vllm_plugins import plugin
from specpack.vllm_plugins.version import check_vllm_version, is_tested, parse_version

SPEC = {"model": "specpack.vllm_plugins.SuffixDecoding", "num_speculative_tokens": 8}


def test_version_parsing_and_range():
    assert parse_version("0.32.0") == (0, 32)
    assert parse_version("0.33.1+cpu") == (0, 33)
    assert is_tested("0.32.0") and is_tested("0.33.2")
    assert not is_tested("0.31.9") and not is_tested("0.34.0") and not is_tested(None)


def test_untested_version_message(caplog):
    with caplog.at_level(logging.WARNING, logger="specpack.vllm"):
        assert check_vllm_version("0.30.1", strict=False) is False
    msg = caplog.records[-1].getMessage()
    assert "found vLLM 0.30.1" in msg and "0.32.x - 0.33.x" in msg
    with pytest.raises(RuntimeError, match="found vLLM 0.40.0"):
        check_vllm_version("0.40.0", strict=True)
    assert check_vllm_version("0.32.0", strict=True) is True


def test_installed_vllm_is_in_tested_range():
    pytest.importorskip("vllm")
    assert check_vllm_version(strict=True)


def test_validate_engine_args():
    assert plugin.validate_engine_args(json.dumps(SPEC), None) == "suffix"
    assert plugin.validate_engine_args({"method": "ngram", "num_speculative_tokens": 3}, None) is None
    with pytest.raises(ConfigError, match="allowed values: .*specpack.vllm_plugins.SuffixDecoding"):
        plugin.validate_engine_args({**SPEC, "model": "specpack.vllm_plugins.Nope"}, None)
    with pytest.raises(ConfigError, match="num_speculative_tokens"):
        plugin.validate_engine_args({**SPEC, "num_speculative_tokens": 0}, None)
    with pytest.raises(ConfigError, match="not valid JSON"):
        plugin.validate_engine_args("{bad", None)
    with pytest.raises(ConfigError, match="'suffix_decoding_max_tree_depth'"):
        plugin.validate_engine_args(SPEC, {"specpack": {"suffix_decoding_max_tree_depth": -2}})


def test_entry_point_registered():
    from importlib.metadata import entry_points

    eps = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert eps.get("specpack") == "specpack.vllm_plugins.plugin:register"


def test_register_rejects_bad_server_args_before_engine_start():
    code = (
        "import sys; sys.argv = ['api_server', '--model', 'm', '--speculative-config', "
        f"{json.dumps(json.dumps(SPEC))}, '--additional-config', "
        "'{\"specpack\": {\"suffix_decoding_min_token_prob\": 3}}'];"
        "from specpack.vllm_plugins.plugin import register; register()"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "server not started" in r.stderr
    assert "'suffix_decoding_min_token_prob' = 3" in r.stderr and "<= 1.0" in r.stderr


def test_plugin_load_imports_no_numba_or_vllm():
    """vLLM's CPU worker scans every loaded module right after plugins load and
    crashes on llvmlite objects: the entry point must stay light, even when it
    validates a server's --speculative-config."""
    code = (
        "import sys, json; sys.argv = ['api_server', '--speculative-config', "
        f"{json.dumps(json.dumps(SPEC))}];"
        "from specpack.vllm_plugins.plugin import register; register();"
        "import specpack.vllm_plugins as vp; assert vp.__name__;"
        "bad = [m for m in ('numba', 'llvmlite', 'vllm', 'torch') if m in sys.modules];"
        "print('loaded:', bad); assert not bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
