"""The real anthropic SDK against tests/fake_anthropic.py: batches, responder, latency, channel replies."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import jsonschema
import pytest
from anthropic.types import Message, TextBlock

from fake_anthropic import (
    FakeAnthropic,
    Latency,
    Reply,
    channel_responder,
    ok,
    server_error,
    synthetic_answer,
)
from tubetune.dataset.build import DatasetSettings, quality_problem
from tubetune.dataset.dedup import find_duplicates
from tubetune.generate.answers import ANSWERS_SCHEMA, check_answers
from tubetune.generate.questions import QUESTIONS_SCHEMA, QuestionSettings, question_problem

MODEL = "claude-sonnet-4-6"
EXCERPT = (
    "so the first thing i do is feed the starter one part starter five parts flour five parts water "
    "and leave it somewhere warm around twenty six degrees until it doubles which takes about six hours "
    "then i mix the dough at seventy percent hydration rest it for an hour before adding the salt and "
    "do four sets of stretch and folds thirty minutes apart bulk fermentation is done when the dough "
    "has grown by half is domed and jiggly and shows bubbles on the sides"
)


def params(text: str = "hello", **extra: Any) -> Any:
    return {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": text}], **extra}


def text(message: Message) -> str:
    block = message.content[0]
    assert isinstance(block, TextBlock)
    return block.text


def sdk(server: FakeAnthropic) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-test", base_url=server.base_url, max_retries=0, timeout=10)


@pytest.fixture
def batch_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(not_found_after_create=2) as server:
        yield server


def test_batch_create_retrieve_results_in_another_order(batch_server: FakeAnthropic) -> None:
    client = sdk(batch_server)
    batch_server.always(ok({"questions": ["Why?"]}, input_tokens=7, output_tokens=3))
    batch_server.script(server_error())  # the first item's reply: a scripted error
    batch_server.batch_outcomes(lambda cid, p: {"c": "expired", "d": "errored:overloaded_error"}.get(cid))
    ids = ["a", "b", "c", "d", "e"]
    created = client.messages.batches.create(requests=[{"custom_id": i, "params": params(i)} for i in ids])
    assert created.id.startswith("msgbatch_")
    assert created.processing_status == "ended"  # batch_processing_s = 0
    for _ in range(2):
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(created.id)
    batch = client.messages.batches.retrieve(created.id)
    assert batch.results_url == f"{batch_server.base_url}/v1/messages/batches/{created.id}/results"
    counts = batch.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.expired) == (0, 2, 2, 1)

    results = list(client.messages.batches.results(created.id))
    assert [r.custom_id for r in results] == ids[::-1]
    by_id = {r.custom_id: r.result for r in results}
    assert by_id["a"].type == "errored" and by_id["a"].error.error.type == "api_error"
    assert by_id["d"].type == "errored" and by_id["d"].error.error.type == "overloaded_error"
    assert by_id["c"].type == "expired"
    succeeded = by_id["b"]
    assert succeeded.type == "succeeded"
    assert text(succeeded.message) == '{"questions": ["Why?"]}'
    assert succeeded.message.usage.output_tokens == 3 and succeeded.message.model == MODEL
    assert batch_server.batch_items_submitted() == ids
    assert batch_server.batches[created.id].items[1].params["messages"][0]["content"] == "b"
    paths = [(r.method, r.path) for r in batch_server.requests]
    assert paths[0] == ("POST", "/v1/messages/batches")
    assert ("GET", f"/v1/messages/batches/{created.id}/results") in paths
    assert batch_server.message_requests() == []


def test_results_of_a_running_batch_are_refused_and_cancel_ends_it() -> None:
    with FakeAnthropic(batch_processing_s=30) as server:
        server.always(ok("x"))
        client = sdk(server)
        batch = client.messages.batches.create(
            requests=[{"custom_id": f"k{i}", "params": params()} for i in range(3)]
        )
        assert batch.processing_status == "in_progress"
        assert batch.request_counts.processing == 3 and batch.results_url is None
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            client.messages.batches.results(batch.id)
        canceling = client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
        ended = client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended" and ended.request_counts.canceled == 3
        assert {r.result.type for r in client.messages.batches.results(batch.id)} == {"canceled"}
        with pytest.raises(anthropic.BadRequestError, match="nothing to cancel"):
            client.messages.batches.cancel(batch.id)


def test_cancel_keeps_the_items_finished_before_it() -> None:
    with FakeAnthropic(batch_processing_s=1.5, batch_cancel_s=0.2) as server:  # items end at 0.5, 1.0, 1.5 s
        server.always(ok("x"))
        client = sdk(server)
        batch = client.messages.batches.create(
            requests=[{"custom_id": f"k{i}", "params": params()} for i in range(3)]
        )
        time.sleep(0.7)
        client.messages.batches.cancel(batch.id)
        assert client.messages.batches.retrieve(batch.id).processing_status == "canceling"
        time.sleep(0.25)
        counts = client.messages.batches.retrieve(batch.id).request_counts
        assert (counts.succeeded, counts.canceled) == (1, 2)
        results = {r.custom_id: r.result.type for r in client.messages.batches.results(batch.id)}
        assert results == {"k0": "succeeded", "k1": "canceled", "k2": "canceled"}


def test_results_route_answers_400_while_in_progress() -> None:
    with FakeAnthropic(batch_processing_s=30) as server:
        server.always(ok("x"))
        batch = sdk(server).messages.batches.create(requests=[{"custom_id": "k", "params": params()}])
        client = sdk(server)
        with pytest.raises(anthropic.BadRequestError, match="not finished"):
            client.get(f"/v1/messages/batches/{batch.id}/results", cast_to=object)


def test_batch_ends_after_processing_time_and_list_pages() -> None:
    with FakeAnthropic(batch_processing_s=0.3) as server:
        server.always(ok("x"))
        client = sdk(server)
        first = client.messages.batches.create(requests=[{"custom_id": "a", "params": params()}])
        second = client.messages.batches.create(requests=[{"custom_id": "a", "params": params()}])
        assert client.messages.batches.retrieve(first.id).processing_status == "in_progress"
        time.sleep(0.35)
        assert client.messages.batches.retrieve(first.id).processing_status == "ended"
        assert [b.id for b in client.messages.batches.list(limit=1)] == [second.id, first.id]
        assert server.batch_items_submitted() == ["a", "a"]
        client.messages.batches.delete(first.id)
        assert [b.id for b in client.messages.batches.list()] == [second.id]


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        ([{"custom_id": "has space", "params": params()}], "does not match"),
        ([{"custom_id": "x" * 65, "params": params()}], "does not match"),
        ([{"custom_id": "same", "params": params()}, {"custom_id": "same", "params": params()}], "another"),
        ([], "non-empty"),
    ],
)
def test_batch_create_validates_custom_ids(
    fake_anthropic: FakeAnthropic, requests: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError, match=message) as caught:
        sdk(fake_anthropic).messages.batches.create(requests=requests)  # type: ignore[arg-type]
    assert caught.value.type == "invalid_request_error"
    assert fake_anthropic.batches == {}


def test_a_64_hex_cache_key_is_a_valid_custom_id(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.always(ok("x"))
    key = "0123456789abcdef" * 4
    batch = sdk(fake_anthropic).messages.batches.create(requests=[{"custom_id": key, "params": params()}])
    assert fake_anthropic.batch_items_submitted() == [key] and batch.request_counts.succeeded == 1


def test_reply_precedence_queue_responder_always(fake_anthropic: FakeAnthropic) -> None:
    client = sdk(fake_anthropic)
    with pytest.raises(anthropic.BadRequestError, match="no reply scripted"):
        client.messages.create(**params())
    fake_anthropic.always(ok("always"))
    fake_anthropic.respond_with(lambda body: ok("echo " + body["messages"][0]["content"]))
    fake_anthropic.script(ok("scripted"))
    texts = [text(client.messages.create(**params("one"))) for _ in range(2)]
    assert texts == ["scripted", "echo one"]
    fake_anthropic.respond_with(None)
    assert text(client.messages.create(**params())) == "always"


def test_latency_and_max_in_flight() -> None:
    latency = Latency(first_token_s=0.2, tokens_per_s=100.0)
    assert latency.seconds(ok("x", output_tokens=30)) == pytest.approx(0.5)
    assert latency.seconds(server_error()) == 0.0
    with FakeAnthropic(latency=latency) as server:
        server.always(ok("x", output_tokens=10))  # 0.3 s each
        client = sdk(server)
        started = time.monotonic()
        threads = [threading.Thread(target=client.messages.create, kwargs=params()) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    assert server.max_in_flight == 4 and server.in_flight == 0
    assert 0.3 <= elapsed < 1.0  # concurrent, not 4 x 0.3 s
    assert server.backend_calls() == 4


HEADER = 'Channel video: "Feeding a starter" (from 0:00 to 2:00).\n\nTranscript excerpt:\n'


def questions_body(excerpt: str, n: int, cached_system: bool = False) -> Any:
    system: Any = "You write training questions."
    if cached_system:
        system = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
    user = f'{HEADER}"""\n{excerpt}\n"""\n\nWrite {n} questions. Reply with JSON: {{"questions": ["..."]}}.'
    return {
        "model": MODEL,
        "max_tokens": 2048,
        "system": system,
        "messages": [{"role": "user", "content": user}],
        "output_config": {"format": {"type": "json_schema", "schema": QUESTIONS_SCHEMA}},
    }


def answers_body(excerpt: str, questions: list[str]) -> Any:
    numbered = "\n".join(f"{i}. {q}" for i, q in enumerate(questions, start=1))
    user = (
        f'{HEADER}"""\n{excerpt}\n"""\n\n'
        f"Questions:\n{numbered}\n\nAnswer every question by its number."
    )
    return {
        "model": MODEL,
        "max_tokens": 2048,
        "system": [{"type": "text", "text": "You answer viewers' questions."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": user}]}],
        "output_config": {"format": {"type": "json_schema", "schema": ANSWERS_SCHEMA}},
    }


def reply_data(reply: Reply) -> Any:
    assert reply.status == 200 and reply.body is not None
    return json.loads(reply.body["content"][0]["text"])


def test_channel_responder_questions_pass_validation() -> None:
    body = questions_body(EXCERPT, 6, cached_system=True)
    reply = channel_responder(body)
    data = reply_data(reply)
    jsonschema.validate(data, QUESTIONS_SCHEMA)
    questions = data["questions"]
    settings = QuestionSettings(
        per_1k_tokens=7, min_per_chunk=2, max_per_chunk=8, min_chars=12, max_chars=300
    )
    assert len(questions) == 6 and len({q.lower() for q in questions}) == 6
    assert [question_problem(q, settings) for q in questions] == [None] * 6
    assert find_duplicates(questions, 0.75) == []
    assert channel_responder(questions_body(EXCERPT, 6)).body == reply.body  # deterministic
    assert channel_responder(questions_body(EXCERPT + " crust", 6)).body != reply.body
    assert reply.body is not None
    usage = reply.body["usage"]
    assert usage["output_tokens"] == len(reply.body["content"][0]["text"]) // 4
    assert usage["input_tokens"] > len(EXCERPT) // 4
    # a re-ask (previous reply, then a complaint) gets the same questions
    reask = questions_body(EXCERPT, 6)
    reask["messages"] += [
        {"role": "assistant", "content": "not json"},
        {"role": "user", "content": "Your previous reply was not valid JSON. Reply again."},
    ]
    assert reply_data(channel_responder(reask)) == data


def test_channel_responder_answers_pass_check_answers_and_dataset_filters() -> None:
    questions = reply_data(channel_responder(questions_body(EXCERPT, 4)))["questions"]
    data = reply_data(channel_responder(answers_body(EXCERPT, questions)))
    jsonschema.validate(data, ANSWERS_SCHEMA)
    check_answers(len(questions))(data)
    filters = DatasetSettings(
        system_prompt="You are the voice of a channel.",
        near_duplicate_threshold=0.75,
        min_question_chars=15,
        min_answer_chars=40,
        max_answer_chars=2000,
        max_example_tokens=1024,
        split={"train": 0.8, "valid": 0.1, "test": 0.1},
        seed=13,
    )
    for item, question in zip(data["answers"], questions, strict=True):
        assert item["answerable"] is True and item["reason"] == ""
        assert 300 <= len(item["answer"]) <= 500
        assert quality_problem({"question": question, "answer": item["answer"]}, filters) is None
    assert len({item["answer"] for item in data["answers"]}) == len(questions)


def test_channel_responder_handles_tiny_excerpts_and_unknown_schemas() -> None:
    questions = reply_data(channel_responder(questions_body("bake", 8)))["questions"]
    assert len(set(questions)) == 8
    assert 300 <= len(synthetic_answer("", "Why?", 1)) <= 500
    unknown = questions_body(EXCERPT, 2)
    unknown["output_config"]["format"]["schema"] = {"type": "object", "properties": {}}
    assert channel_responder(unknown).status == 400
    missing = questions_body(EXCERPT, 2)
    missing["messages"][0]["content"] = "no count here"
    assert channel_responder(missing).status == 400


def test_channel_responder_serves_the_sdk_and_batches(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.respond_with(channel_responder)
    client = sdk(fake_anthropic)
    body = questions_body(EXCERPT, 3)
    message = client.messages.create(**body)
    assert len(json.loads(text(message))["questions"]) == 3
    batch = client.messages.batches.create(requests=[{"custom_id": "q1", "params": body}])
    [line] = client.messages.batches.results(batch.id)
    assert line.result.type == "succeeded"
    assert text(line.result.message) == text(message)
