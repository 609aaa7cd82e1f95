"""The LLM client through the real anthropic SDK, pointed at a fake Messages API on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import (
    FakeAnthropic,
    RecordedRequest,
    client_settings,
    error,
    ok,
    rate_limited,
    server_error,
)
from tubetune.errors import TubetuneError
from tubetune.llm.backends import BackendError, MissingCredentialsError
from tubetune.llm.cache import iter_entries
from tubetune.llm.client import REASK_TEMPLATE, InvalidOutputError, LLMClient
from tubetune.llm.request import LLMRequest, Message
from tubetune.llm.settings import LLMSettings

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "questions": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
    },
    "required": ["questions"],
    "additionalProperties": False,
}
# What goes on the wire: the SDK's transform_schema moves constraints the API cannot enforce
# (minLength here) into descriptions; the client still checks them on every reply.
WIRE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "questions": {
            "type": "array",
            "items": {"type": "string", "description": "{minLength: 1}"},
            "minItems": 1,
        },
    },
    "additionalProperties": False,
    "required": ["questions"],
}
SYSTEM = "You write questions a viewer would ask about a sourdough video transcript."
GOOD = {"questions": ["How long should the starter rest before the bake?"]}


@pytest.fixture
def settings(tmp_path: Path, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> LLMSettings:
    return client_settings(
        fake_anthropic, tmp_path / "cache", monkeypatch,
        model="claude-haiku-4-5", max_retries=2, max_reasks=2,
    )


def chunk_request(client: LLMClient, n: int = 1) -> LLMRequest:
    return client.new_request(SYSTEM, f"Transcript chunk {n}: feed the starter, wait, then mix.", SCHEMA)


def request_from_wire(body: dict[str, Any]) -> LLMRequest:
    """Rebuild the LLMRequest a recorded HTTP body was made from (inverse of the backend)."""
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": WIRE_SCHEMA}}
    return LLMRequest(
        backend="anthropic",
        model=body["model"],
        system=body.get("system", ""),
        messages=tuple(Message(m["role"], m["content"]) for m in body["messages"]),
        output_schema=SCHEMA,
        max_tokens=body["max_tokens"],
    )


def stored_keys(settings: LLMSettings) -> set[str]:
    return {entry["key"] for entry in iter_entries(settings.cache_dir)}


def test_success_sends_schema_model_and_no_temperature(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(ok(GOOD, input_tokens=120, output_tokens=30))
    client = LLMClient(settings)
    request = chunk_request(client)

    result = client.complete_json(request)

    assert result.data == GOOD
    assert (result.calls, result.attempts, result.key) == (1, 1, request.key())
    assert result.usage == {
        "input_tokens": 120,
        "output_tokens": 30,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    [sent] = fake_anthropic.message_requests()
    assert sent.headers["authorization"] == "Bearer sk-ant-test"
    assert "temperature" not in sent.body
    assert sent.body["model"] == "claude-haiku-4-5"
    assert sent.body["max_tokens"] == settings.max_tokens
    assert sent.body["system"] == SYSTEM
    assert sent.body["output_config"] == {"format": {"type": "json_schema", "schema": WIRE_SCHEMA}}
    assert sent.body["messages"] == [m.to_dict() for m in request.messages]
    assert request_from_wire(sent.body).key() == request.key()
    [entry] = list(iter_entries(settings.cache_dir))
    assert entry["key"] == request.key()
    assert entry["request"] == request.to_dict()
    assert entry["response"]["usage"]["input_tokens"] == 120
    assert entry["response"]["stop_reason"] == "end_turn"
    assert client.stats()["calls"] == 1


def test_second_client_replays_from_cache_without_http(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(ok(GOOD))
    first = LLMClient(settings).complete_json(chunk_request(LLMClient(settings)))
    assert len(fake_anthropic.requests) == 1

    client = LLMClient(settings)
    again = client.complete_json(chunk_request(client))

    assert len(fake_anthropic.requests) == 1
    assert again.data == first.data
    assert (again.calls, again.cached, again.usage) == (0, True, {})
    assert client.stats()["cache_hits"] == 1
    assert "calls" not in client.stats()


def test_invalid_json_is_reasked_and_both_replies_cached(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(ok('{"questions": ["unfinished'), ok(GOOD))
    client = LLMClient(settings)
    request = chunk_request(client)

    result = client.complete_json(request)

    assert result.data == GOOD
    assert (result.calls, result.attempts) == (2, 2)
    first, second = fake_anthropic.message_requests()
    assert first.body["messages"] == [m.to_dict() for m in request.messages]
    assert second.body["messages"][:-2] == first.body["messages"]
    assert second.body["messages"][-2] == {"role": "assistant", "content": '{"questions": ["unfinished'}
    reask = second.body["messages"][-1]
    assert reask["role"] == "user"
    assert reask["content"].startswith("Your previous reply was not valid: not JSON (")
    assert reask["content"].endswith(REASK_TEMPLATE.split("{reason}")[1])
    assert stored_keys(settings) == {request.key(), request_from_wire(second.body).key()}
    assert result.keys == (request.key(), request_from_wire(second.body).key())

    rerun = LLMClient(settings).complete_json(chunk_request(client))
    assert (rerun.data, rerun.calls, rerun.attempts) == (GOOD, 0, 2)
    assert len(fake_anthropic.requests) == 2


def test_schema_violation_reason_goes_into_the_reask(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(ok({"questions": [""]}), ok(GOOD))
    client = LLMClient(settings)

    result = client.complete_json(chunk_request(client))

    assert result.attempts == 2
    reask = fake_anthropic.message_requests()[1].body["messages"][-1]["content"]
    assert "does not match the schema" in reask
    assert "should be non-empty at $.questions[0]" in reask
    assert client.stats()["reasks"] == 1


def test_validate_callback_rejects_and_reasks(settings: LLMSettings, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(ok({"questions": ["What is a levain?"]}), ok(GOOD))
    client = LLMClient(settings)

    def grounded(data: Any) -> None:
        if "levain" in data["questions"][0]:
            raise ValueError("question 1 is not answered by the transcript")

    result = client.complete_json(chunk_request(client), validate=grounded)

    assert result.data == GOOD
    reask = fake_anthropic.message_requests()[1].body["messages"][-1]["content"]
    assert "question 1 is not answered by the transcript" in reask


def test_invalid_after_all_reasks_raises_and_replays(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    settings = dataclasses.replace(settings, max_reasks=1)
    fake_anthropic.script(ok("Sure! Here are some questions."), ok("```json\n{}\n```"))
    client = LLMClient(settings)

    with pytest.raises(InvalidOutputError) as caught:
        client.complete_json(chunk_request(client))

    assert isinstance(caught.value, TubetuneError)
    assert caught.value.texts == ["Sure! Here are some questions.", "```json\n{}\n```"]
    assert "'questions' is a required property" in caught.value.reason
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("LLM output still invalid after 2 attempt(s): ")
    assert len(stored_keys(settings)) == 2
    assert client.stats()["invalid"] == 1

    with pytest.raises(InvalidOutputError):
        LLMClient(settings).complete_json(chunk_request(client))
    assert len(fake_anthropic.requests) == 2


def test_rate_limit_is_retried_by_the_sdk(settings: LLMSettings, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(rate_limited(), ok(GOOD))
    client = LLMClient(settings)

    result = client.complete_json(chunk_request(client))

    assert result.data == GOOD
    assert result.calls == 1
    first, second = fake_anthropic.message_requests()
    assert first.body == second.body
    assert second.headers.get("x-stainless-retry-count") == "1"


def test_persistent_500_raises_backend_error_with_one_line(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.always(server_error())
    client = LLMClient(settings)

    with pytest.raises(BackendError) as caught:
        client.complete_json(chunk_request(client))

    assert str(caught.value) == "anthropic: HTTP 500 api_error after 2 retries: Internal server error"
    assert caught.value.status_code == 500
    assert len(fake_anthropic.requests) == 1 + settings.max_retries
    assert stored_keys(settings) == set()


def test_bad_request_is_not_retried(settings: LLMSettings, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(error(400, "invalid_request_error", "output_config.format.schema: bad\nschema"))
    client = LLMClient(settings)

    with pytest.raises(BackendError) as caught:
        client.complete_json(chunk_request(client))

    assert (
        str(caught.value)
        == "anthropic: HTTP 400 invalid_request_error: output_config.format.schema: bad schema"
    )
    assert len(fake_anthropic.requests) == 1


def test_bad_key_names_the_variable(settings: LLMSettings, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.script(error(401, "authentication_error", "invalid x-api-key"))
    client = LLMClient(settings)

    with pytest.raises(
        BackendError, match=r"HTTP 401 authentication_error: invalid x-api-key \(check ANTHROPIC"
    ):
        client.complete_json(chunk_request(client))


def test_timeout_raises_backend_error(settings: LLMSettings, fake_anthropic: FakeAnthropic) -> None:
    settings = dataclasses.replace(settings, timeout_s=0.2, max_retries=0)
    fake_anthropic.script(ok(GOOD, delay_s=1.0))
    client = LLMClient(settings)

    with pytest.raises(BackendError, match=r"no answer from .* within 0.2 s"):
        client.complete_json(chunk_request(client))
    assert stored_keys(settings) == set()


def test_unreachable_server_raises_backend_error(settings: LLMSettings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = dataclasses.replace(settings, base_url=f"http://127.0.0.1:{port}", max_retries=0)
    client = LLMClient(settings)

    with pytest.raises(BackendError, match=rf"cannot connect to http://127.0.0.1:{port}"):
        client.complete_json(chunk_request(client))


def test_killed_run_never_pays_twice(settings: LLMSettings, fake_anthropic: FakeAnthropic) -> None:
    """The server fails for good after two answers; the rerun only asks for what was never stored."""
    fake_anthropic.script(ok({"questions": ["q1"]}), ok("not json"), ok({"questions": ["q2"]}))
    fake_anthropic.always(server_error())
    client = LLMClient(settings)
    done = []
    with pytest.raises(BackendError):
        for n in range(1, 5):
            done.append(client.complete_json(chunk_request(client, n)).data)
    assert done == [{"questions": ["q1"]}, {"questions": ["q2"]}]
    paid = stored_keys(settings)
    assert len(paid) == 3  # chunk 1, chunk 2 and its re-ask
    seen_before = len(fake_anthropic.requests)

    fake_anthropic.always(None)
    fake_anthropic.script(ok({"questions": ["q3"]}), ok({"questions": ["q4"]}))
    rerun = LLMClient(settings)
    results = [rerun.complete_json(chunk_request(rerun, n)) for n in range(1, 5)]

    assert [r.data["questions"][0] for r in results] == ["q1", "q2", "q3", "q4"]
    assert [r.calls for r in results] == [0, 0, 1, 1]
    new_requests: list[RecordedRequest] = fake_anthropic.requests[seen_before:]
    assert len(new_requests) == 2
    assert not {request_from_wire(r.body).key() for r in new_requests} & paid


def test_reply_is_stored_before_it_is_checked(settings: LLMSettings, fake_anthropic: FakeAnthropic) -> None:
    """A crash while checking a reply (here: in the validate callback) loses nothing paid for."""
    fake_anthropic.script(ok(GOOD))
    client = LLMClient(settings)

    def crash(data: Any) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        client.complete_json(chunk_request(client), validate=crash)

    result = LLMClient(settings).complete_json(chunk_request(client))
    assert (result.data, result.calls) == (GOOD, 0)
    assert len(fake_anthropic.requests) == 1


def test_missing_key_on_a_miss_is_one_clear_line(
    settings: LLMSettings, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    settings = dataclasses.replace(settings, seed_cache_dirs=("data/sample/llm_cache",))
    client = LLMClient(settings)
    request = chunk_request(client)

    with pytest.raises(MissingCredentialsError) as caught:
        client.complete_json(request)

    message = str(caught.value)
    assert "\n" not in message
    assert request.key() in message
    assert f"searched {settings.cache_dir}, data/sample/llm_cache" in message
    assert (
        "set ANTHROPIC_API_KEY, or choose llm.backend: llama_cpp with llm.gguf, or restore the cache"
        in message
    )
    assert fake_anthropic.requests == []


def test_cache_hit_needs_no_key_and_no_sdk_client(
    settings: LLMSettings, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_anthropic.script(ok(GOOD))
    LLMClient(settings).complete_json(chunk_request(LLMClient(settings)))
    monkeypatch.delenv("ANTHROPIC_API_KEY")

    client = LLMClient(settings)
    result = client.complete_json(chunk_request(client))

    assert (result.data, result.calls) == (GOOD, 0)
    assert client._backend is None


def test_seed_cache_is_read_but_never_written(
    settings: LLMSettings, fake_anthropic: FakeAnthropic, tmp_path: Path
) -> None:
    seed = dataclasses.replace(settings, cache_dir=str(tmp_path / "seed"))
    fake_anthropic.script(ok(GOOD), ok({"questions": ["new"]}))
    LLMClient(seed).complete_json(chunk_request(LLMClient(seed), 1))

    settings = dataclasses.replace(settings, seed_cache_dirs=(seed.cache_dir,))
    client = LLMClient(settings)
    hit = client.complete_json(chunk_request(client, 1))
    miss = client.complete_json(chunk_request(client, 2))

    assert (hit.data, hit.calls) == (GOOD, 0)
    assert (miss.data, miss.calls) == ({"questions": ["new"]}, 1)
    assert len(stored_keys(seed)) == 1
    assert stored_keys(settings) == {miss.key}


def test_log_summary_counts_everything(
    settings: LLMSettings, fake_anthropic: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    fake_anthropic.script(
        ok("oops", input_tokens=10, output_tokens=1), ok(GOOD, input_tokens=30, output_tokens=7)
    )
    client = LLMClient(settings)
    client.complete_json(chunk_request(client))
    client.complete_json(chunk_request(client))

    with caplog.at_level(logging.INFO, logger="tubetune.llm.client"):
        line = client.log_summary()

    assert line in caplog.text
    assert line.startswith(
        "LLM anthropic/claude-haiku-4-5: 4 requests, 2 cache hits, 2 backend calls, 2 re-asks"
    )
    assert "tokens in 40, out 8" in line
