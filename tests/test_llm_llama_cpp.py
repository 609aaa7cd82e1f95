"""The LLM client on a real GGUF (SmolLM2-135M-Instruct, bundled) through llama-cpp-python."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tubetune.config import section_config
from tubetune.llm.backends import LlamaCppBackend
from tubetune.llm.cache import iter_entries
from tubetune.llm.client import InvalidOutputError, LLMClient, LLMResult
from tubetune.llm.request import LLMRequest
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "minLength": 10, "maxLength": 120},
        "difficulty": {"enum": ["easy", "medium", "hard"]},
        "minutes": {"type": "integer", "minimum": 1, "maximum": 600},
    },
    "required": ["question", "difficulty", "minutes"],
    "additionalProperties": False,
}
SYSTEM = "You write one question a baker would ask about a text, as a JSON object."
TEXT = "Text: Feed the sourdough starter once a day with equal weights of flour and water, then wait 4 hours."


def llama_settings(cache_dir: Path, **changes: Any) -> LLMSettings:
    values = {
        "backend": "llama_cpp",
        "gguf": "bundled:smollm2-135m-instruct",
        "n_ctx": 1024,
        "max_tokens": 96,
        "max_reasks": 1,
        "cache_dir": str(cache_dir),
    }
    settings = settings_from(LLMSettings, section_config("llm", values), "llm")
    return dataclasses.replace(settings, **changes)


def question_request(client: LLMClient) -> LLMRequest:
    return client.new_request(SYSTEM, TEXT, SCHEMA)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> LlamaCppBackend:
    """One model load for the whole file (it loads on its first call)."""
    return LlamaCppBackend(llama_settings(tmp_path_factory.mktemp("unused")))


@pytest.fixture(scope="module")
def first_run(
    tmp_path_factory: pytest.TempPathFactory, backend: LlamaCppBackend
) -> tuple[LLMSettings, LLMResult]:
    settings = llama_settings(tmp_path_factory.mktemp("llama") / "cache")
    client = LLMClient(settings, backend=backend)
    return settings, client.complete_json(question_request(client))


def test_schema_constrained_json_parses_and_validates(first_run: tuple[LLMSettings, LLMResult]) -> None:
    settings, result = first_run
    jsonschema.validate(result.data, SCHEMA)
    assert result.data["difficulty"] in {"easy", "medium", "hard"}
    assert (result.calls, result.attempts) == (1, 1)
    assert result.usage["input_tokens"] > 0 and result.usage["output_tokens"] > 0
    [entry] = list(iter_entries(settings.cache_dir))
    assert entry["request"]["model"] == "gguf:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert entry["response"]["text"] == result.text


def test_rerun_is_served_from_the_cache_without_loading_the_model(
    first_run: tuple[LLMSettings, LLMResult],
) -> None:
    settings, result = first_run
    client = LLMClient(settings)

    again = client.complete_json(question_request(client))

    assert (again.data, again.calls) == (result.data, 0)
    assert client._backend is None


def test_greedy_decoding_reproduces_the_same_text(
    first_run: tuple[LLMSettings, LLMResult], backend: LlamaCppBackend, tmp_path: Path
) -> None:
    _, result = first_run
    client = LLMClient(llama_settings(tmp_path / "fresh"), backend=backend)

    again = client.complete_json(question_request(client))

    assert again.calls == 1
    assert again.text == result.text


def test_rejected_replies_are_reasked_through_the_chat_template(
    backend: LlamaCppBackend, tmp_path: Path
) -> None:
    settings = llama_settings(tmp_path / "reask", max_reasks=1)
    client = LLMClient(settings, backend=backend)
    seen: list[Any] = []

    def never_good_enough(data: Any) -> None:
        seen.append(data)
        raise ValueError("the question must quote the text")

    with pytest.raises(InvalidOutputError) as caught:
        client.complete_json(question_request(client), validate=never_good_enough)

    assert len(caught.value.texts) == 2 and len(seen) == 2
    for data in seen:
        jsonschema.validate(data, SCHEMA)
    assert caught.value.reason == "the question must quote the text"
    entries = list(iter_entries(settings.cache_dir))
    assert sorted(len(e["request"]["messages"]) for e in entries) == [1, 3]
    assert client.stats()["calls"] == 2
