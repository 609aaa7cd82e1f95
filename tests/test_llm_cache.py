"""Request keys, the response cache, LLM settings and JSON checking (no backend calls)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tubetune.config import section_config, validate_config
from tubetune.errors import ConfigError
from tubetune.llm.cache import CachedResponse, ResponseCache, entry_path, iter_entries
from tubetune.llm.client import LLMClient, parse_json, reask_request, schema_error
from tubetune.llm.request import LLMRequest, Message
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

ROOT = Path(__file__).resolve().parents[1]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def make_request(**changes: Any) -> LLMRequest:
    request = LLMRequest(
        backend="anthropic",
        model="claude-sonnet-4-5",
        system="You answer questions.",
        messages=(Message("user", "How long do I proof the dough?"),),
        output_schema=SCHEMA,
        max_tokens=512,
    )
    return dataclasses.replace(request, **changes)


# -- keys ----------------------------------------------------------------------------------------


def test_key_is_pinned() -> None:
    """Reference responses are stored under these keys: changing the key format orphans them all."""
    assert make_request().key() == "79d3895e484a75dee5de125df02bbfd4d774e855601618b99491b4e59b4b17e4"


@pytest.mark.parametrize(
    "changes",
    [
        {"backend": "llama_cpp"},
        {"model": "claude-sonnet-4-6"},
        {"system": "You answer questions briefly."},
        {"messages": (Message("user", "How long do I proof the dough? "),)},
        {"output_schema": {**SCHEMA, "required": []}},
        {"max_tokens": 513},
    ],
)
def test_anything_that_reaches_the_model_changes_the_key(changes: dict[str, Any]) -> None:
    assert make_request(**changes).key() != make_request().key()


def test_key_ignores_dict_order() -> None:
    reordered = dict(reversed(list(SCHEMA.items())))
    assert make_request(output_schema=reordered).key() == make_request().key()


def test_reask_request_appends_the_bad_reply_and_the_reason() -> None:
    original = make_request()
    reask = reask_request(original, "", "the reply was empty")
    assert reask.messages[:-2] == original.messages
    assert reask.messages[-2] == Message("assistant", "(empty reply)")
    assert reask.messages[-1].content.startswith("Your previous reply was not valid: the reply was empty. ")
    assert reask.key() == reask_request(original, "", "the reply was empty").key()
    assert reask.key() != reask_request(original, "{}", "the reply was empty").key()


# -- the cache -----------------------------------------------------------------------------------


def test_put_writes_one_json_file_named_by_key(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache")
    request = make_request()
    path = cache.put(
        request, CachedResponse(key=request.key(), text='{"answer": "2 h"}', usage={"input_tokens": 9})
    )

    assert path == entry_path(tmp_path / "cache", request.key())
    assert path.parent.name == request.key()[:2]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left behind
    entry = json.loads(path.read_text(encoding="utf-8"))
    assert LLMRequest.from_dict(entry["request"]).key() == request.key()
    assert entry["response"] == {
        "text": '{"answer": "2 h"}',
        "usage": {"input_tokens": 9},
        "stop_reason": None,
    }
    assert cache.get(request) == CachedResponse(
        key=request.key(), text='{"answer": "2 h"}', usage={"input_tokens": 9}
    )
    assert request in cache
    assert make_request(max_tokens=1) not in cache


def test_writable_cache_wins_then_seeds_in_order(tmp_path: Path) -> None:
    request = make_request()
    for name in ("seed1", "seed2", "own"):
        ResponseCache(tmp_path / name).put(request, CachedResponse(key=request.key(), text=name))

    assert ResponseCache(tmp_path / "own", [tmp_path / "seed1"]).get(request).text == "own"  # type: ignore[union-attr]
    seeded = ResponseCache(tmp_path / "empty", [tmp_path / "seed2", tmp_path / "seed1"])
    assert seeded.get(request).text == "seed2"  # type: ignore[union-attr]
    assert not (tmp_path / "empty").exists()


def test_unreadable_entry_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    request = make_request()
    ResponseCache(tmp_path / "seed").put(request, CachedResponse(key=request.key(), text="from seed"))
    broken = entry_path(tmp_path / "own", request.key())
    broken.parent.mkdir(parents=True)
    broken.write_text('{"key": "half a fi', encoding="utf-8")

    with caplog.at_level(logging.WARNING):
        hit = ResponseCache(tmp_path / "own", [tmp_path / "seed"]).get(request)

    assert hit is not None and hit.text == "from seed"
    assert "ignoring unreadable cache entry" in caplog.text


def test_client_serves_hits_without_touching_the_backend(tmp_path: Path) -> None:
    """llama_cpp with a GGUF that does not exist: a hit never loads it, a miss says what is wrong."""
    settings = llm_settings(
        backend="llama_cpp", gguf=str(tmp_path / "absent.gguf"), cache_dir=str(tmp_path / "c")
    )
    client = LLMClient(settings)
    request = client.new_request("You answer questions.", "How long?", SCHEMA)
    assert request.model == "gguf:absent.gguf"
    client.cache.put(request, CachedResponse(key=request.key(), text='{"answer": "two hours"}'))

    result = client.complete_json(request)

    assert (result.data, result.calls, result.attempts) == ({"answer": "two hours"}, 0, 1)
    assert client.stats() == {"requests": 1, "cache_hits": 1, "valid": 1}
    with pytest.raises(ConfigError, match=r"^llm.gguf: file not found: .*absent.gguf$"):
        client.complete_json(client.new_request("You answer questions.", "How hot?", SCHEMA))


def test_cached_invalid_chain_replays_to_a_valid_answer(tmp_path: Path) -> None:
    settings = llm_settings(
        backend="llama_cpp", gguf=str(tmp_path / "absent.gguf"), cache_dir=str(tmp_path / "c")
    )
    client = LLMClient(settings)
    request = client.new_request("You answer questions.", "How long?", SCHEMA)
    client.cache.put(request, CachedResponse(key=request.key(), text='{"answer": 2}'))
    reason = "does not match the schema: 2 is not of type 'string' at $.answer"
    follow_up = reask_request(request, '{"answer": 2}', reason)
    client.cache.put(follow_up, CachedResponse(key=follow_up.key(), text='{"answer": "2 hours"}'))

    result = client.complete_json(request)

    assert (result.data, result.attempts, result.calls) == ({"answer": "2 hours"}, 2, 0)
    assert result.keys == (request.key(), follow_up.key())
    assert len(list(iter_entries(settings.cache_dir))) == 2


# -- settings ------------------------------------------------------------------------------------


def llm_settings(**values: Any) -> LLMSettings:
    """LLM settings from ``values`` and the schema's defaults for the other keys."""
    return settings_from(LLMSettings, section_config("llm", values), "llm")


def test_settings_get_the_schema_defaults() -> None:
    schema = yaml.safe_load((ROOT / "config.schema.yaml").read_text(encoding="utf-8"))
    properties = schema["properties"]["llm"]["properties"]
    defaults = llm_settings()
    assert set(properties) == {f.name for f in dataclasses.fields(LLMSettings)}
    for name, spec in properties.items():
        expected = tuple(spec["default"]) if isinstance(spec["default"], list) else spec["default"]
        assert getattr(defaults, name) == expected, name


def test_settings_from_the_validated_project_config() -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    validate_config(config, ROOT / "config.schema.yaml")

    settings = settings_from(LLMSettings, config["llm"], "llm")

    assert settings.backend == config["llm"]["backend"]
    assert settings.seed_cache_dirs == tuple(config["llm"]["seed_cache_dirs"])
    assert settings.cache_dirs() == (settings.cache_dir, *settings.seed_cache_dirs)
    with pytest.raises(ConfigError, match="llm: missing key 'backend'"):
        settings_from(LLMSettings, {}, "llm")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"modle": "x"}, "unknown key 'llm.modle'"),
        ({"backend": "openai"}, "llm.backend: 'openai' is not one of ['anthropic', 'llama_cpp']"),
        ({"backend": "llama_cpp"}, "llm.backend is llama_cpp but llm.gguf is not set"),
        ({"backend": "llama_cpp", "gguf": "bundled:gpt-5"}, "unknown bundled model 'gpt-5'"),
        ({"max_reasks": -1}, "llm.max_reasks: -1 is less than the minimum of 0"),
        ({"n_ctx": 1}, "llm.n_ctx: 1 is less than the minimum of 512"),
    ],
)
def test_bad_settings_are_one_line_config_errors(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        llm_settings(**section).request_model  # noqa: B018
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bundled_gguf_resolves_to_the_packaged_file() -> None:
    settings = llm_settings(backend="llama_cpp", gguf="bundled:smollm2-135m-instruct")
    assert settings.gguf_path().is_file()
    assert settings.request_model == "gguf:SmolLM2-135M-Instruct.Q4_1.gguf"


# -- checking replies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ('{"answer": "x"}', {"answer": "x"}),
        ('  \n{"answer": "x"}\n', {"answer": "x"}),
        ('```json\n{"answer": "x"}\n```', {"answer": "x"}),
        ('```\n{"answer": "x"}', {"answer": "x"}),
    ],
)
def test_parse_json_accepts_plain_and_fenced(text: str, data: Any) -> None:
    assert parse_json(text) == data


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the reply was empty"),
        ("```json\n```", "the reply was empty"),
        ('{"answer": "x"', "not JSON (Expecting ',' delimiter at line 1 column 15)"),
        ("Here you go: {}", "not JSON (Expecting value at line 1 column 1)"),
    ],
)
def test_parse_json_reasons(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_json(text)
    assert str(caught.value).startswith(reason)


def test_schema_error_names_the_path_and_fits_on_one_line() -> None:
    validator = jsonschema.Draft202012Validator(
        {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}}}}
    )
    assert schema_error(validator, {"items": ["a", "b"]}) is None
    assert schema_error(validator, {"items": ["a", 3]}) == "3 is not of type 'string' at $.items[1]"
    long = schema_error(validator, {"items": ["a", {"x": "y" * 1000}]})
    assert long is not None and len(long) <= 300 and "\n" not in long
