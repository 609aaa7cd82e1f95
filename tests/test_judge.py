"""The judge (rule judge): base vs tuned answers in both orders through the real anthropic SDK, pointed at
the fake Anthropic API on 127.0.0.1; outcome rules, offline default, errors, intervals, batch mode."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import FakeAnthropic, Reply, client_settings, error, ok
from tubetune.config import section_config
from tubetune.evaluate.judge import JUDGE_SCHEMA, JudgeOutputs, judge, judge_requests, summarize
from tubetune.generate.chunk import Chunk
from tubetune.jsonio import read_json, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
PROMPT = ROOT / "data" / "prompts" / "judge_answers.md"
CHUNK = Chunk(
    chunk_id="sourdough01-0000",
    video_id="sourdough01",
    title="Feeding a sourdough starter",
    index=0,
    start=62.0,
    end=185.5,
    n_tokens=120,
    text="so i feed my starter once a day one part starter five parts flour five parts water",
)
# A's model, the question number, from the judge's user message.
SHOWN_A = re.compile(r'Answer A:\n"""\n(base|tuned) answer (\d+)')

Rating = tuple[str, int]


@dataclasses.dataclass
class Case:
    """What the fake judge says about question ``n``: its preference per order (``order`` is the model
    shown as A) and the ratings of each model per order."""

    prefer: Callable[[int, str], str]
    ratings: Callable[[int, str, str], Rating] = lambda n, shown_first, model: ("yes", 3)


def reply(data: Mapping[str, Any]) -> Reply:
    return ok(dict(data), input_tokens=100, output_tokens=20)


def judge_reply(case: Case, body: dict[str, Any]) -> Reply:
    """The fake judge's reply to one judge request (the first user turn decides it)."""
    user = body["messages"][0]["content"]
    match = SHOWN_A.search(user)
    if match is None:
        return error(400, "invalid_request_error", "not a judge request")
    first, n = match.group(1), int(match.group(2))
    second = "tuned" if first == "base" else "base"
    preferred = case.prefer(n, first)
    better = "tie" if preferred == "tie" else "A" if preferred == first else "B"

    def rating(model: str) -> dict[str, Any]:
        faithful, style = case.ratings(n, first, model)
        return {"faithful": faithful, "style": style}

    return reply({"answer_a": rating(first), "answer_b": rating(second),
                  "reason": f"The {preferred} answer follows the excerpt.", "better": better})


def answer_row(n: int, chunk_id: str = CHUNK.chunk_id) -> dict[str, Any]:
    return {
        "index": n,
        "question": f"How often do you feed the starter, case {n}?",
        "reference": "Once a day, one part starter to five parts flour and five parts water.",
        "meta": {"video_id": CHUNK.video_id, "title": CHUNK.title, "chunk_id": chunk_id,
                 "start": CHUNK.start, "end": CHUNK.end},
        "base": {"answer": f"base answer {n}: feed it whenever.", "finish_reason": "stop"},
        "tuned": {"answer": f"tuned answer {n}: once a day, 1:5:5.", "finish_reason": "stop"},
    }


@dataclasses.dataclass
class Job:
    """The judge's inputs and outputs in a temp dir and the llm/judge config it runs with."""

    tmp: Path
    llm: dict[str, Any]
    judge_config: dict[str, Any]

    @property
    def outputs(self) -> JudgeOutputs:
        return JudgeOutputs(
            rows=self.tmp / "eval" / "judge.jsonl",
            summary=self.tmp / "eval" / "judge.json",
            usage=self.tmp / "llm" / "usage" / "judge.json",
        )

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        write_jsonl(self.tmp / "answers.jsonl", rows)
        write_jsonl(self.tmp / "chunks.jsonl", [CHUNK.to_dict()])

    def run(self, resamples: int = 200) -> dict[str, Any]:
        result = judge(
            self.tmp / "answers.jsonl", [self.tmp / "chunks.jsonl"], PROMPT, self.outputs,
            self.llm, self.judge_config, bootstrap_resamples=resamples, seed=0,
        )
        assert read_json(self.outputs.summary) == json.loads(json.dumps(result))
        return result

    def rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.outputs.rows)


@pytest.fixture
def job(tmp_path: Path, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> Job:
    settings = client_settings(
        fake_anthropic, tmp_path / "cache", monkeypatch, model="claude-sonnet-4-6", concurrency=1,
        max_retries=0, max_reasks=1,
    )
    judge_config = section_config("judge", {"model": "claude-haiku-4-5", "prompt": str(PROMPT)})
    return Job(tmp_path, dataclasses.asdict(settings), judge_config)


def respond(server: FakeAnthropic, case: Case) -> None:
    server.respond_with(lambda body: judge_reply(case, body))


# ------------------------------------------------------------------------------------------- outcomes


def outcome_case() -> Case:
    """1: prefers whatever is shown first (flips); 2: tuned in both orders; 3: tie in one order;
    4: base in both orders."""

    def prefer(n: int, first: str) -> str:
        return {1: first, 2: "tuned", 3: "tuned" if first == "tuned" else "tie", 4: "base"}[n]

    def ratings(n: int, first: str, model: str) -> Rating:
        if n == 2 and model == "tuned":
            return ("yes", 5) if first == "base" else ("partly", 4)
        return ("no", 1) if model == "base" else ("yes", 3)

    return Case(prefer, ratings)


def test_both_orders_flip_is_tie_consistent_is_win_tie_in_one_order_is_tie(
    job: Job, fake_anthropic: FakeAnthropic
) -> None:
    respond(fake_anthropic, outcome_case())
    job.write([answer_row(n) for n in (1, 2, 3, 4)])

    result = job.run()

    rows = job.rows()
    assert [(r["index"], r["outcome"], r["flipped"]) for r in rows] == [
        (1, "tie", True), (2, "tuned", False), (3, "tie", False), (4, "base", False),
    ]
    flip = rows[0]
    assert [(o["order"], o["preferred"]) for o in flip["orders"]] == [
        ("base_first", "base"), ("tuned_first", "tuned"),
    ]
    assert all(o["reason"] and len(o["request_key"]) == 64 for o in flip["orders"])
    # per answer: the worse faithfulness of the two orders, the mean style
    assert rows[1]["faithfulness"] == {"base": "no", "tuned": "partly"}
    assert rows[1]["style"] == {"base": 1.0, "tuned": 4.5}
    assert result["status"] == "ok" and result["reason"] is None
    counts = (result["n"], result["errors"], result["tuned_wins"], result["base_wins"], result["ties"])
    assert counts == (4, 0, 1, 1, 2)
    assert result["flips"] == 1
    assert result["tuned_win_rate"] == 0.5  # (1 + 2 / 2) / 4
    low, high = result["ci95"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0
    assert result["faithfulness"]["base"] == {"yes": 0, "partly": 0, "no": 4, "yes_rate": 0.0, "score": 0.0}
    tuned = {"yes": 3, "partly": 1, "no": 0, "yes_rate": 0.75, "score": 0.875}
    assert result["faithfulness"]["tuned"] == tuned
    assert result["faithful_delta"] == 0.875
    assert result["style"]["base"] == {"mean": 1.0} and result["style"]["tuned"] == {"mean": 3.375}
    assert result["style"]["delta"] == 2.375
    assert len(result["style"]["delta_ci95"]) == 2 and len(result["faithful_delta_ci95"]) == 2


def test_requests_show_both_orders_with_the_chunk_and_use_the_judge_model(
    job: Job, fake_anthropic: FakeAnthropic
) -> None:
    respond(fake_anthropic, outcome_case())
    job.write([answer_row(2)])

    result = job.run()

    bodies = [r.body for r in fake_anthropic.message_requests()]
    assert len(bodies) == 2
    assert {b["model"] for b in bodies} == {"claude-haiku-4-5"} and result["model"] == "claude-haiku-4-5"
    assert all(b["max_tokens"] == 1024 for b in bodies)
    first, second = (b["messages"][0]["content"] for b in bodies)
    assert 'Answer A:\n"""\nbase answer 2' in first and 'Answer B:\n"""\ntuned answer 2' in first
    assert 'Answer A:\n"""\ntuned answer 2' in second and 'Answer B:\n"""\nbase answer 2' in second
    for text in (first, second):
        assert '"Feeding a sourdough starter" (from 1:02 to 3:05)' in text
        assert CHUNK.text in text and "Reference answer: Once a day" in text
    # enums, no numeric bounds: the API enforces the whole schema
    wire = bodies[0]["output_config"]["format"]["schema"]
    assert wire["properties"]["answer_a"]["properties"]["style"] == {"enum": [1, 2, 3, 4, 5]}
    # the keys in judge.jsonl are the requests' cache keys, as judge_requests builds them
    keys = [o["request_key"] for o in job.rows()[0]["orders"]]
    planned = judge_requests(
        job.tmp / "answers.jsonl", [job.tmp / "chunks.jsonl"], PROMPT, job.llm, job.judge_config
    )
    assert [r.key() for r in planned] == keys
    assert planned[0].output_schema == JUDGE_SCHEMA
    # usage record and dollars: 2 calls of 100 tokens in, 20 out at claude-haiku-4-5's price ($1 / $5 per M)
    usage = read_json(job.outputs.usage)
    assert (usage["pass"], usage["mode"], usage["calls"]) == ("judge", "online", 2)
    assert usage["model"] == "claude-haiku-4-5"
    assert result["usage"] == usage
    assert result["dollars"] == pytest.approx((200 * 1.0 + 40 * 5.0) / 1e6)


def test_rerun_without_key_replays_the_cache(
    job: Job, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    respond(fake_anthropic, outcome_case())
    job.write([answer_row(n) for n in (1, 2)])
    first = job.run()
    sent = len(fake_anthropic.requests)
    monkeypatch.delenv("ANTHROPIC_API_KEY")

    again = job.run()

    assert len(fake_anthropic.requests) == sent == 4
    assert again["status"] == "ok"
    assert {k: v for k, v in again.items() if k != "usage"} == {
        **{k: v for k, v in first.items() if k != "usage"}, "dollars": 0.0
    }
    assert (again["usage"]["calls"], again["usage"]["cache_hits"]) == (0, 4)


# ------------------------------------------------------------------------------------------- not run


def test_missing_replies_without_key_is_not_run_with_reason_and_no_request(
    job: Job, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    job.write([answer_row(n) for n in (1, 2, 3)])

    result = job.run()

    assert fake_anthropic.requests == []
    assert result["status"] == "not_run"
    assert "6 of 6 judge requests have no cached reply" in result["reason"]
    assert "ANTHROPIC_API_KEY is not set" in result["reason"] and "another machine" in result["reason"]
    assert "\n" not in result["reason"]
    assert "n" not in result and "tuned_win_rate" not in result
    assert job.rows() == []
    assert read_json(job.outputs.usage)["calls"] == 0 and result["dollars"] == 0.0


def test_disabled_makes_no_request(job: Job, fake_anthropic: FakeAnthropic) -> None:
    respond(fake_anthropic, outcome_case())
    job.judge_config = {**job.judge_config, "enabled": False}
    job.write([answer_row(1)])

    result = job.run()

    assert fake_anthropic.requests == []
    assert (result["status"], result["reason"]) == ("not_run", "judge.enabled is false")
    assert job.rows() == [] and job.outputs.usage.is_file()


# ------------------------------------------------------------------------------------------- errors


def test_invalid_reply_is_reasked(job: Job, fake_anthropic: FakeAnthropic) -> None:
    bad = {"answer_a": {"faithful": "yes", "style": 7}, "answer_b": {"faithful": "yes", "style": 3},
           "reason": "A is better.", "better": "A"}
    fake_anthropic.script(reply(bad))
    respond(fake_anthropic, outcome_case())
    job.write([answer_row(2)])

    result = job.run()

    bodies = [r.body for r in fake_anthropic.message_requests()]
    assert [len(b["messages"]) for b in bodies] == [1, 3, 1]
    assert "not valid" in bodies[1]["messages"][2]["content"]
    assert job.rows()[0]["outcome"] == "tuned"
    assert result["usage"]["reasks"] == 1 and result["n"] == 1


def test_unknown_chunk_and_failed_request_are_error_rows(job: Job, fake_anthropic: FakeAnthropic) -> None:
    case = outcome_case()

    def responder(body: dict[str, Any]) -> Reply:
        if "case 4?" in body["messages"][0]["content"]:
            return error(400, "invalid_request_error", "prompt is too long")
        return judge_reply(case, body)

    fake_anthropic.respond_with(responder)
    job.write([answer_row(2), answer_row(3, chunk_id="elsewhere01-0007"), answer_row(4)])

    result = job.run()

    rows = job.rows()
    assert [r["outcome"] for r in rows] == ["tuned", "error", "error"]
    assert "elsewhere01-0007" in rows[1]["error"] and "chunk" in rows[1]["error"]
    assert rows[1]["orders"] == [] and rows[1]["faithfulness"] is None
    assert "prompt is too long" in rows[2]["error"]
    assert (result["n"], result["errors"], result["tuned_wins"], result["tuned_win_rate"]) == (1, 2, 1, 1.0)
    assert result["ci95"] is None  # one question: nothing to resample
    assert len(fake_anthropic.message_requests()) == 4  # no request for the row without its chunk


# ------------------------------------------------------------------------------------------- intervals


def test_every_question_won_by_tuned_gives_rate_one_and_interval_one(
    job: Job, fake_anthropic: FakeAnthropic
) -> None:
    respond(fake_anthropic, Case(lambda n, first: "tuned"))
    job.write([answer_row(n) for n in range(1, 7)])

    result = job.run(resamples=500)

    assert (result["tuned_wins"], result["tuned_win_rate"], result["ci95"]) == (6, 1.0, [1.0, 1.0])
    assert result["style"]["delta"] == 0.0 and result["style"]["delta_ci95"] == [0.0, 0.0]


def summary_row(
    outcome: str, faithful: tuple[str, str] = ("yes", "yes"), style: tuple[float, float] = (3, 3)
) -> dict[str, Any]:
    """A judge.jsonl row as summarize reads it (base first in each pair)."""
    return {
        "outcome": outcome,
        "flipped": False,
        "faithfulness": dict(zip(("base", "tuned"), faithful, strict=True)),
        "style": dict(zip(("base", "tuned"), style, strict=True)),
    }


def test_summary_intervals_on_known_fixtures() -> None:
    ties = summarize([summary_row("tie")] * 8, n_resamples=300, seed=1)
    assert (ties["tuned_win_rate"], ties["ci95"]) == (0.5, [0.5, 0.5])
    half = summarize([summary_row("tuned"), summary_row("base")] * 10, n_resamples=2000, seed=1)
    low, high = half["ci95"]
    assert half["tuned_win_rate"] == 0.5 and 0.2 < low < 0.5 < high < 0.8
    better = summarize([summary_row("tuned", ("no", "yes"), (2, 4))] * 5, n_resamples=300, seed=1)
    assert (better["faithful_delta"], better["faithful_delta_ci95"]) == (1.0, [1.0, 1.0])
    assert (better["style"]["delta"], better["style"]["delta_ci95"]) == (2.0, [2.0, 2.0])
    nothing = summarize([{"outcome": "error"}], n_resamples=300, seed=1)
    assert (nothing["n"], nothing["errors"], nothing["tuned_win_rate"], nothing["ci95"]) == (0, 1, None, None)


# ------------------------------------------------------------------------------------------- batch mode


def test_batch_mode_sends_message_batches_then_reads_the_cache(
    job: Job, fake_anthropic: FakeAnthropic
) -> None:
    respond(fake_anthropic, outcome_case())
    job.llm = {**job.llm, "mode": "batch", "batch_poll_s": 0.02}
    job.write([answer_row(n) for n in (1, 2, 3)])

    result = job.run()

    assert fake_anthropic.message_requests() == []
    assert len(fake_anthropic.batch_items_submitted()) == 6
    assert [r["outcome"] for r in job.rows()] == ["tie", "tuned", "tie"]
    usage = read_json(job.outputs.usage)
    assert (usage["pass"], usage["mode"], usage["batches"], usage["calls"]) == ("judge", "batch", 1, 6)
    # 6 items of 100 tokens in, 20 out at claude-haiku-4-5's price, half price in a batch
    assert result["dollars"] == pytest.approx((600 * 1.0 + 120 * 5.0) / 1e6 * 0.5)


# ------------------------------------------------------------------------------------------- llama_cpp


@pytest.mark.slow  # loads the bundled GGUF and generates
def test_llama_cpp_backend_judges_without_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local backend needs no key: the judge runs on the GGUF (judge.model does not apply)."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    llm = section_config("llm", {"backend": "llama_cpp", "gguf": "bundled:smollm2-135m-instruct",
                                 "n_ctx": 2048, "max_reasks": 1, "cache_dir": str(tmp_path / "cache")})
    judge_config = section_config("judge", {"model": "claude-haiku-4-5", "max_tokens": 128})
    job = Job(tmp_path, llm, judge_config)
    job.write([answer_row(1)])

    result = job.run()

    assert result["status"] == "ok" and result["model"].startswith("gguf:")
    assert result["n"] + result["errors"] == 1 and result["dollars"] == 0.0
    [row] = job.rows()
    assert row["outcome"] in ("base", "tuned", "tie", "error")
    assert read_json(job.outputs.usage)["backend"] == "llama_cpp"
