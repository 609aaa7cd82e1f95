"""The quality judge of build_dataset through the real anthropic SDK against the fake API on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from dataset_inputs import (
    DATASET,
    dataset_outputs,
    numbered_questions,
    passes,
    rating_responder,
    write_inputs,
)
from fake_anthropic import FakeAnthropic, client_settings
from tubetune.dataset.build import build_dataset
from tubetune.dataset.quality import QUALITY_SCHEMA, verdict
from tubetune.jsonio import read_jsonl

LOW = {
    "What is hooch and should I pour it off?": ("grounded", 2, "the excerpt never mentions hooch"),
    "How deep should a single score go?": ("useful", 1, "the answer is about preheating, not scoring"),
    "When do I add the salt to the dough?": ("self_contained", 3, "fine, but which dough is unclear"),
}


def _llm(
    server: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **values: object
) -> dict[str, Any]:
    return dataclasses.asdict(client_settings(server, tmp_path / "cache", monkeypatch, **values)) | {
        "seed_cache_dirs": []
    }


def test_pairs_under_the_threshold_are_dropped_with_the_judges_reason(
    tmp_path: Path, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_anthropic.respond_with(rating_responder(LOW))
    inputs = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    llm = _llm(fake_anthropic, tmp_path, monkeypatch)

    stats = build_dataset(
        *inputs.args(),
        dataset_outputs(out),
        DATASET,
        tmp_path / "review",
        passes(inputs, llm, tmp_path, quality={"threshold": 3}),
    )

    # one request per chunk, the chunk's text once, all its pairs numbered
    requests = fake_anthropic.message_requests()
    assert len(requests) == 5
    assert all(len(numbered_questions(r.body)) == 2 for r in requests)
    assert all(r.body["messages"][0]["content"].count("so for ") == 1 for r in requests)
    dropped = {row["question"]: row for row in read_jsonl(out / "dropped.jsonl")}
    assert dropped["What is hooch and should I pour it off?"]["reason"] == (
        "quality: not grounded (2/5): the excerpt never mentions hooch"
    )
    assert dropped["How deep should a single score go?"]["reason"] == (
        "quality: not useful (1/5): the answer is about preheating, not scoring"
    )
    assert dropped["How deep should a single score go?"]["ratings"] == {
        "grounded": 5,
        "self_contained": 5,
        "useful": 1,
    }
    assert "When do I add the salt to the dough?" not in dropped  # 3 is not under the threshold 3
    kept = [
        json.loads(line)["messages"][1]["content"]
        for n in ("train", "valid", "test")
        for line in (out / f"{n}.jsonl").read_text().splitlines()
    ]
    assert len(kept) == 8 and not set(kept) & set(dropped)
    assert stats["dropped"]["quality: not grounded"] == 1
    assert stats["dropped"]["quality: not useful"] == 1
    quality = stats["quality"]
    assert {k: quality[k] for k in ("threshold", "pairs", "rated", "kept", "dropped", "unrated")} == {
        "threshold": 3,
        "pairs": 10,
        "rated": 10,
        "kept": 8,
        "dropped": 2,
        "unrated": 0,
    }
    assert quality["dropped_by"] == {"not grounded": 1, "not useful": 1}
    assert quality["per_criterion"]["grounded"]["ratings"] == {"1": 0, "2": 1, "3": 0, "4": 0, "5": 9}
    assert quality["per_criterion"]["self_contained"]["below_threshold"] == 0
    assert quality["errors"] == {}
    usage = json.loads((tmp_path / "usage" / "quality.json").read_text())
    assert (usage["pass"], usage["mode"], usage["requests"], usage["calls"]) == ("quality", "online", 5, 5)
    assert usage["input_tokens"] == 5 * 300
    assert json.loads((tmp_path / "usage" / "augment.json").read_text())["requests"] == 0
    md = (out / "stats.md").read_text()
    assert "## Quality judge (threshold 3)" in md
    assert "| quality: not grounded | 1 |" in md


def test_a_failed_rating_keeps_the_pairs_as_unrated(
    tmp_path: Path, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_anthropic.respond_with(rating_responder(LOW, fail_on="What is hooch and should I pour it off?"))
    inputs = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    llm = _llm(fake_anthropic, tmp_path, monkeypatch)

    stats = build_dataset(
        *inputs.args(),
        dataset_outputs(out),
        DATASET,
        tmp_path / "review",
        passes(inputs, llm, tmp_path, quality={}),
    )

    quality = stats["quality"]
    assert (quality["rated"], quality["unrated"], quality["kept"], quality["dropped"]) == (8, 2, 9, 1)
    assert len(quality["errors"]) == 1 and list(quality["errors"].values()) == [2]
    assert "prompt is too long" in next(iter(quality["errors"]))
    questions = [
        json.loads(line)["messages"][1]["content"]
        for n in ("train", "valid", "test")
        for line in (out / f"{n}.jsonl").read_text().splitlines()
    ]
    assert "What is hooch and should I pour it off?" in questions  # unrated: kept, not dropped
    assert stats["examples"]["total"] == 9


def test_a_rerun_reads_the_cache_and_batch_mode_goes_through_message_batches(
    tmp_path: Path, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_anthropic.respond_with(rating_responder(LOW))
    inputs = write_inputs(tmp_path / "in")
    llm = _llm(fake_anthropic, tmp_path, monkeypatch, mode="batch", batch_poll_s=0.02)

    batch = build_dataset(
        *inputs.args(),
        dataset_outputs(tmp_path / "a"),
        DATASET,
        tmp_path / "review",
        passes(inputs, llm, tmp_path, quality={}),
    )

    assert not fake_anthropic.message_requests()
    assert len(fake_anthropic.batch_items_submitted()) == 5
    usage = json.loads((tmp_path / "usage" / "quality.json").read_text())
    assert (usage["pass"], usage["mode"], usage["requests"], usage["batches"]) == ("quality", "batch", 5, 1)
    sent = len(fake_anthropic.requests)
    online = {**llm, "mode": "online"}  # the same requests: every reply is in the cache now
    again = build_dataset(
        *inputs.args(),
        dataset_outputs(tmp_path / "b"),
        DATASET,
        tmp_path / "review",
        passes(inputs, online, tmp_path, quality={}),
    )
    assert len(fake_anthropic.requests) == sent
    assert again["quality"] == batch["quality"]
    assert json.loads((tmp_path / "usage" / "quality.json").read_text())["cache_hits"] == 5


def test_both_passes_off_send_nothing_and_write_zero_records(
    tmp_path: Path, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_anthropic.respond_with(rating_responder(LOW))
    inputs = write_inputs(tmp_path / "in")
    llm = _llm(fake_anthropic, tmp_path, monkeypatch)
    without = build_dataset(*inputs.args(), dataset_outputs(tmp_path / "a"), DATASET, tmp_path / "review")

    stats = build_dataset(
        *inputs.args(),
        dataset_outputs(tmp_path / "b"),
        DATASET,
        tmp_path / "review",
        passes(inputs, llm, tmp_path),
    )

    assert fake_anthropic.requests == []
    assert stats["quality"] == {"enabled": False}
    assert stats["augment"] == {"enabled": False, "paraphrases_per_question": 0}
    for name in ("quality", "augment"):
        record = json.loads((tmp_path / "usage" / f"{name}.json").read_text())
        assert record["pass"] == name and record["enabled"] is False
        assert record["requests"] == record["calls"] == record["input_tokens"] == 0
    for name in ("train", "valid", "test", "dropped"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (
            tmp_path / "b" / f"{name}.jsonl"
        ).read_bytes()
    assert {k: v for k, v in stats.items() if k not in ("quality", "augment")} == without
    assert "llm" not in stats
    assert "[results/llm/ledger.md](../llm/ledger.md)" in (tmp_path / "b" / "stats.md").read_text()


def test_ratings_are_enums_and_the_lowest_criterion_names_the_drop() -> None:
    item = QUALITY_SCHEMA["properties"]["ratings"]["items"]
    assert all(
        item["properties"][name]["enum"] == [1, 2, 3, 4, 5]
        for name in ("grounded", "self_contained", "useful")
    )
    rating = {"grounded": 2, "self_contained": 1, "useful": 4, "reason": "  vague \n question "}
    assert verdict(rating, 3) == "not self-contained (1/5): vague question"
    assert verdict({**rating, "self_contained": 3, "grounded": 3}, 3) is None
