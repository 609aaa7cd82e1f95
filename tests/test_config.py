"""Config validation: defaults from the schema, one-line errors, a key order that does not depend on
config.yaml, and settings dataclasses built from a validated section."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tubetune.config import section_config, validate_config
from tubetune.errors import ConfigError
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config.schema.yaml"


def _validated(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    validate_config(config, SCHEMA)
    return config


def test_a_default_written_out_or_keys_reordered_give_the_same_params() -> None:
    """Rules get config sections as params, compared by Snakemake as text: the order must be fixed."""
    repo = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    plain = _validated(repo)
    explicit = copy.deepcopy(repo)
    model = explicit.setdefault("model", {})
    explicit["model"] = {"check_tokens": plain["model"]["check_tokens"], **dict(reversed(model.items()))}
    explicit["llm"] = {"prices": plain["llm"]["prices"], **dict(reversed(explicit.get("llm", {}).items()))}
    explicit = dict(reversed(explicit.items()))
    assert json.dumps(_validated(explicit)) == json.dumps(plain)


def test_maps_without_a_schema_key_list_are_sorted() -> None:
    config = _validated({"llm": {"prices": {
        "z-model": {"input": 1, "output": 2, "cache_write": 1, "cache_read": 0.1, "batch_discount": 0.5},
        "a-model": {"batch_discount": 0.5, "cache_read": 0.1, "cache_write": 1, "output": 2, "input": 1},
    }}})
    prices = config["llm"]["prices"]
    assert list(prices) == ["a-model", "z-model"]
    assert list(prices["a-model"]) == list(prices["z-model"]) == [
        "input", "output", "cache_write", "cache_read", "batch_discount"
    ]


def test_section_config_fills_the_schema_defaults_and_checks_bounds() -> None:
    llm = section_config("llm", {"backend": "llama_cpp", "gguf": "model.gguf"})
    assert llm["n_ctx"] == 8192 and llm["backend"] == "llama_cpp"
    with pytest.raises(ConfigError, match=r"llm.n_ctx"):
        section_config("llm", {"n_ctx": 1})  # the schema's minimum, not a second copy in the dataclass


def test_settings_from_converts_types_and_names_bad_keys() -> None:
    settings = settings_from(LLMSettings, section_config("llm", {"seed_cache_dirs": ["a", "b"]}), "llm")
    assert settings.seed_cache_dirs == ("a", "b") and isinstance(settings.timeout_s, float)
    values = section_config("llm")
    with pytest.raises(ConfigError, match=r"unknown key 'llm.colour'"):
        settings_from(LLMSettings, {**values, "colour": "blue"}, "llm")
    with pytest.raises(ConfigError, match=r"llm: missing key 'model'"):
        settings_from(LLMSettings, {k: v for k, v in values.items() if k != "model"}, "llm")


def test_settings_from_reports_a_wrong_type_with_its_key() -> None:
    @dataclass(frozen=True)
    class Example:
        count: int

    with pytest.raises(ConfigError, match=r"config error: demo.count: "):
        settings_from(Example, {"count": "many"}, "demo")


def test_cross_key_checks_stay_in_the_dataclass() -> None:
    with pytest.raises(ConfigError, match=r"llm.backend is llama_cpp but llm.gguf is not set"):
        settings_from(LLMSettings, section_config("llm", {"backend": "llama_cpp"}), "llm")
