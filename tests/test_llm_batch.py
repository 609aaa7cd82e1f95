"""Online concurrency, rate-limit storms, prompt caching and Message Batches, through the real SDK
against the fake Anthropic API on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import FakeAnthropic, Latency, Reply, client_settings, error, ok, overloaded, rate_limited
from tubetune.llm.backends import BackendError, MissingCredentialsError
from tubetune.llm.batch import (
    BatchPassError,
    BatchResultBackend,
    PlannedRequest,
    run_batch_pass,
    split_batches,
    state_path,
)
from tubetune.llm.cache import iter_entries
from tubetune.llm.client import LLMClient, LLMResult
from tubetune.llm.request import LLMRequest, Message
from tubetune.llm.settings import LLMSettings

ROOT = Path(__file__).resolve().parents[1]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"questions": {"type": "array", "items": {"type": "string"}}},
    "required": ["questions"],
    "additionalProperties": False,
}
SYSTEM = "You write questions a viewer would ask about a sourdough video transcript."
GOOD = {"questions": ["How long should the starter rest before the bake?"]}


@pytest.fixture
def settings(tmp_path: Path, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> LLMSettings:
    return client_settings(
        fake_anthropic, tmp_path / "cache", monkeypatch,
        model="claude-haiku-4-5", max_retries=2, max_reasks=1, mode="batch", batch_poll_s=0.02,
    )


def requests_for(client: LLMClient, n: int) -> list[LLMRequest]:
    return [
        client.new_request(SYSTEM, f"Excerpt {i}: feed the starter, wait, bake.", SCHEMA) for i in range(n)
    ]


def planned(requests: list[LLMRequest]) -> list[PlannedRequest]:
    return [PlannedRequest(r, None, f"chunk{i}") for i, r in enumerate(requests)]


# ------------------------------------------------------------------------------------------- online


def test_online_keeps_several_requests_in_flight_never_more_than_concurrency(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.latency = Latency(first_token_s=0.3)
    fake_anthropic.always(ok(GOOD))
    client = LLMClient(dataclasses.replace(settings, mode="online", concurrency=3))
    items = [(r, None) for r in requests_for(client, 9)]
    outcomes = client.complete_all(items, "test")
    assert all(isinstance(o, LLMResult) for o in outcomes)
    assert fake_anthropic.max_in_flight == 3
    assert len(fake_anthropic.message_requests()) == 9
    # outcomes keep the order of the items
    assert [o.key for o in outcomes if isinstance(o, LLMResult)] == [r.key() for r, _ in items]


def test_rate_limit_and_overload_storm_is_waited_out(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    # max_retries 0: the SDK gives up at once, so every 429/529 reaches the shared backoff
    storm = [rate_limited() if i % 2 else overloaded() for i in range(24)]
    fake_anthropic.script(*storm)
    fake_anthropic.always(ok(GOOD))
    client = LLMClient(dataclasses.replace(settings, mode="online", concurrency=4, max_retries=0))
    outcomes = client.complete_all([(r, None) for r in requests_for(client, 6)], "test")
    assert all(isinstance(o, LLMResult) for o in outcomes), outcomes
    assert len(fake_anthropic.message_requests()) == 24 + 6


def test_rate_limit_gives_up_after_rate_limit_wait_s(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.always(error(429, "rate_limit_error", "Rate limit exceeded.", {"retry-after": "1"}))
    client = LLMClient(dataclasses.replace(settings, mode="online", max_retries=0, rate_limit_wait_s=2.5))
    [outcome] = client.complete_all([(requests_for(client, 1)[0], None)], "test")
    assert isinstance(outcome, BackendError)
    assert outcome.status_code == 429
    assert len(fake_anthropic.message_requests()) == 3  # the first try, then two 1 s waits


def test_long_system_prompt_is_sent_for_prompt_caching(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.always(ok(GOOD, cache_read_input_tokens=700))
    client = LLMClient(
        dataclasses.replace(settings, mode="online", cache_min_tokens={"claude-haiku-4-5": 200})
    )
    long_system = SYSTEM + " Keep each question self-contained and specific." * 60
    client.complete_json(client.new_request(long_system, "Excerpt: feed the starter.", SCHEMA))
    client.complete_json(client.new_request(SYSTEM, "Excerpt: feed the starter.", SCHEMA))
    long_body, short_body = (r.body for r in fake_anthropic.message_requests())
    assert long_body["system"] == [
        {"type": "text", "text": long_system, "cache_control": {"type": "ephemeral"}}
    ]
    assert short_body["system"] == SYSTEM
    record = client.usage_record("questions", "test", 1.0)
    assert record["cache_read_input_tokens"] == 1400 and record["calls"] == 2


# ------------------------------------------------------------------------------------------- batches


def test_batch_resubmits_only_failed_items_and_quarantines_invalid_requests(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.always(ok(GOOD))
    client = LLMClient(settings)
    requests = requests_for(client, 6)
    keys = [r.key() for r in requests]
    seen: Counter[str] = Counter()

    def outcome(custom_id: str, params: dict[str, Any]) -> str | None:
        seen[custom_id] += 1
        first = seen[custom_id] == 1
        if custom_id == keys[1] and first:
            return "errored:api_error"
        if custom_id == keys[2] and first:
            return "expired"
        if custom_id == keys[3]:
            return "errored:invalid_request_error"
        return None

    fake_anthropic.batch_outcomes(outcome)
    report = run_batch_pass("questions", planned(requests), client)
    submitted = Counter(fake_anthropic.batch_items_submitted())
    assert submitted == {keys[0]: 1, keys[1]: 2, keys[2]: 2, keys[3]: 1, keys[4]: 1, keys[5]: 1}
    assert report["batches"] == 2 and report["rounds"] == 2
    assert report["results"] == {"succeeded": 5, "errored": 2, "expired": 1}
    assert list(report["quarantined"]) == [keys[3]]
    assert "invalid_request_error" in report["quarantined"][keys[3]]
    assert report["calls"] == 5 and report["input_tokens"] == 500 and report["output_tokens"] == 100
    assert len(list(iter_entries(settings.cache_dir))) == 5
    assert (
        not state_path(settings.cache_dir, "questions").exists()
        or not json.loads(state_path(settings.cache_dir, "questions").read_text())["batches"]
    )

    # the per-video rules then run from the cache: zero calls, the quarantined one with its reason
    report_path = Path(settings.cache_dir).parent / "questions.json"
    report_path.write_text(json.dumps(report))
    offline = LLMClient(settings, backend=BatchResultBackend(report_path))
    outcomes = offline.complete_all([(r, None) for r in requests], "test")
    assert [isinstance(o, LLMResult) for o in outcomes] == [True, True, True, False, True, True]
    assert isinstance(outcomes[3], BackendError) and "invalid_request_error" in str(outcomes[3])
    assert offline.stats().get("calls", 0) == 0 and offline.stats()["cache_hits"] == 5


def test_batch_gives_up_after_max_retries(settings: LLMSettings, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.always(ok(GOOD))
    fake_anthropic.batch_outcomes(lambda custom_id, params: "errored:overloaded_error")
    client = LLMClient(settings)
    [request] = requests_for(client, 1)
    report = run_batch_pass("questions", planned([request]), client)
    assert fake_anthropic.batch_items_submitted() == [request.key()] * 3  # 1 + max_retries
    assert "overloaded_error after 3 attempts" in report["quarantined"][request.key()]


def test_invalid_reply_is_reasked_in_the_next_round(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(ok("not json at all"))
    fake_anthropic.always(ok(GOOD))
    client = LLMClient(settings)
    [request] = requests_for(client, 1)
    report = run_batch_pass("questions", planned([request]), client)
    first, second = fake_anthropic.batch_items_submitted()
    assert first == request.key() and second != first
    assert report["reasks"] == 1 and report["valid"] == 1 and report["rounds"] == 2
    result = client.resolve(request)
    assert result.result is not None and result.result.data == GOOD and result.result.attempts == 2


def test_a_pass_over_the_size_limit_is_split(settings: LLMSettings, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.always(ok(GOOD))
    client = LLMClient(dataclasses.replace(settings, batch_max_requests=2))
    requests = requests_for(client, 5)
    report = run_batch_pass("questions", planned(requests), client)
    assert report["batches"] == 3
    assert [len(b.items) for b in fake_anthropic.batches.values()] == [2, 2, 1]
    # the byte limit splits too
    one_item = len(json.dumps({"custom_id": "x" * 64, "params": {}})) / 1e6
    by_size = list(split_batches(requests, dataclasses.replace(settings, batch_max_mb=one_item * 8)))
    assert len(by_size) > 1 and sum(len(b) for b in by_size) == 5


def test_a_canceled_batch_is_sent_again_on_the_next_run(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.always(ok(GOOD))
    client = LLMClient(settings)
    requests = requests_for(client, 3)
    canceled_key = requests[0].key()
    fake_anthropic.batch_outcomes(lambda custom_id, params: "canceled" if custom_id == canceled_key else None)
    with pytest.raises(BatchPassError, match="canceled batch"):
        run_batch_pass("questions", planned(requests), client)
    assert len(list(iter_entries(settings.cache_dir))) == 2  # the succeeded items were kept
    fake_anthropic.batch_outcomes(None)
    report = run_batch_pass("questions", planned(requests), LLMClient(settings))
    assert fake_anthropic.batch_items_submitted()[3:] == [canceled_key]
    assert report["cache_hits"] == 2 and report["valid"] == 3


def test_not_found_right_after_create_is_waited_out(settings: LLMSettings) -> None:
    with FakeAnthropic(not_found_after_create=2) as server:
        server.always(ok(GOOD))
        client = LLMClient(dataclasses.replace(settings, base_url=server.base_url))
        report = run_batch_pass("questions", planned(requests_for(client, 2)), client)
    assert report["valid"] == 2 and report["batches"] == 1


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_pass_from_the_cache_needs_no_key_and_no_network(
    settings: LLMSettings, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_anthropic.always(ok(GOOD))
    client = LLMClient(settings)
    requests = requests_for(client, 2)
    run_batch_pass("questions", planned(requests), client)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    offline = dataclasses.replace(settings, base_url=closed_port_url())
    report = run_batch_pass("questions", planned(requests), LLMClient(offline))
    assert (report["cache_hits"], report["batches"], report["calls"]) == (2, 0, 0)
    with pytest.raises(MissingCredentialsError, match="ANTHROPIC_API_KEY"):
        run_batch_pass("questions", planned(requests_for(client, 3)), LLMClient(offline))


CHILD = textwrap.dedent(
    """
    import json, sys
    from tubetune.settings import settings_from
    from tubetune.llm.batch import PlannedRequest, run_batch_pass
    from tubetune.llm.client import LLMClient
    from tubetune.llm.request import LLMRequest
    from tubetune.llm.settings import LLMSettings

    settings = settings_from(LLMSettings, json.loads(sys.argv[1]), "llm")
    requests = [LLMRequest.from_dict(r) for r in json.loads(sys.argv[2])]
    run_batch_pass("questions", [PlannedRequest(r) for r in requests], LLMClient(settings))
    """
)


def test_killed_while_polling_then_resumed_sends_nothing_twice(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.always(ok(GOOD))
    fake_anthropic.batch_processing_s = 3.0
    client = LLMClient(settings)
    requests = requests_for(client, 4)
    config = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(config), json.dumps([r.to_dict() for r in requests])],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state = state_path(settings.cache_dir, "questions")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (
            fake_anthropic.batches
            and state.is_file()
            and all(entry.get("id") for entry in json.loads(state.read_text())["batches"].values())
        ):
            break
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        time.sleep(0.05)
    time.sleep(0.2)  # polling
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    assert len(fake_anthropic.batches) == 1 and not list(iter_entries(settings.cache_dir))

    report = run_batch_pass("questions", planned(requests), LLMClient(settings))
    assert len(fake_anthropic.batches) == 1  # no new batch
    assert sorted(fake_anthropic.batch_items_submitted()) == sorted(r.key() for r in requests)
    assert report["batches"] == 0 and report["resumed_in_flight"] == 4 and report["valid"] == 4
    assert len(list(iter_entries(settings.cache_dir))) == 4
    assert report["calls"] == 4  # the results it collected, paid for by the killed run


def test_a_reply_for_a_request_no_longer_planned_is_still_stored(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    """A prompt edited while a batch is in flight: the old batch's replies are paid for; keep them."""
    fake_anthropic.always(ok(GOOD))
    fake_anthropic.batch_processing_s = 0.3
    client = LLMClient(settings)
    old = requests_for(client, 2)
    state = state_path(settings.cache_dir, "questions")
    # simulate a killed run: one batch created for the old requests and recorded in the state file
    from tubetune.llm.batch import BatchState, PassCounts, _Connection, _PassRun, _submit

    run = _PassRun("questions", BatchState(state), client, PassCounts(), connection=_Connection(client, None))
    _submit(old, run)
    edited = [r.followed_by(Message("user", "Ask about hydration.")) for r in old[:1]]
    run_batch_pass("questions", planned(edited), LLMClient(settings))
    assert {e["key"] for e in iter_entries(settings.cache_dir)} == {r.key() for r in (*old, *edited)}


def test_reply_fields_only_succeeded_items_are_billed(
    settings: LLMSettings, fake_anthropic: FakeAnthropic
) -> None:
    fake_anthropic.script(ok(GOOD, input_tokens=1000, output_tokens=50))
    fake_anthropic.always(Reply(200, None))  # never used: the second item expires for good
    client = LLMClient(dataclasses.replace(settings, max_retries=0))
    requests = requests_for(client, 2)
    fake_anthropic.batch_outcomes(
        lambda custom_id, params: "expired" if custom_id == requests[1].key() else None
    )
    report = run_batch_pass("questions", planned(requests), client)
    assert (report["input_tokens"], report["output_tokens"], report["calls"]) == (1000, 50, 1)
    assert "expired" in report["quarantined"][requests[1].key()]
