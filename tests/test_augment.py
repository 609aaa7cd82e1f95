"""Augmentation of the train split (build_dataset) through the real anthropic SDK against the fake API."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dataset_inputs import (
    DATASET,
    PARAPHRASES,
    QUESTIONS,
    Inputs,
    dataset_outputs,
    numbered_questions,
    passes,
    write_inputs,
)
from fake_anthropic import FakeAnthropic, Reply, client_settings, error, ok
from tubetune.dataset.augment import DUPLICATE_OF_ORIGINAL, DUPLICATE_OF_PARAPHRASE
from tubetune.dataset.build import LLMPasses, build_dataset, split_videos
from tubetune.dataset.dedup import normalize, similarity
from tubetune.jsonio import read_jsonl

THRESHOLD = DATASET["near_duplicate_threshold"]


def _held_out() -> dict[str, list[str]]:
    """The valid and test questions of the five videos (the split is seeded)."""
    assignment = split_videos(list(QUESTIONS), DATASET["split"], DATASET["seed"])
    held: dict[str, list[str]] = {"valid": [], "test": []}
    for video, split in sorted(assignment.items()):
        if split in held:
            held[split].extend(QUESTIONS[video])
    return held


def paraphrase_responder(fail_on: str | None = None) -> Any:
    """Three paraphrases per question: an honest one, then one that copies or nearly copies a held-out
    (valid/test) question or its own original, then a near copy of the first or a too short one."""
    held = _held_out()
    traps: list[Callable[[str], str]] = [
        lambda q: held["test"][0],  # exactly a test question
        lambda q: held["test"][1].replace("?", ", roughly?"),  # nearly a test question
        lambda q: held["valid"][0].replace("?", " then?"),  # nearly a valid question
        lambda q: q.upper(),  # its own original, in capitals
    ]
    counter = {"n": 0}

    def respond(body: dict[str, Any]) -> Reply:
        numbered = numbered_questions(body)
        if fail_on is not None and any(q == fail_on for _, q in numbered):
            return error(400, "invalid_request_error", "prompt is too long")
        items = []
        for index, question in numbered:
            n = counter["n"]
            counter["n"] += 1
            first = PARAPHRASES[question]
            third = f"Tell me: {first}" if n % 2 == 0 else "Salt when?"
            items.append({"index": index, "questions": [first, traps[n % len(traps)](question), third]})
        return ok(json.dumps({"paraphrases": items}), input_tokens=200, output_tokens=60)

    return respond


def _llm(server: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    settings = client_settings(server, tmp_path / "cache", monkeypatch, concurrency=1)
    return dataclasses.asdict(settings) | {"seed_cache_dirs": []}


def _rows(path: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path))


def _question(row: dict[str, Any]) -> str:
    return str(row["messages"][1]["content"])


def test_paraphrases_reach_train_only_and_never_copy_a_held_out_question(
    tmp_path: Path, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_anthropic.respond_with(paraphrase_responder())
    inputs = write_inputs(tmp_path / "in")
    build_dataset_out(inputs, tmp_path, "plain", None)

    stats = build_dataset_out(
        inputs,
        tmp_path,
        "aug",
        passes(inputs, _llm(fake_anthropic, tmp_path, monkeypatch), tmp_path, paraphrases=3),
    )

    aug, before = tmp_path / "aug", tmp_path / "plain"
    for name in ("valid", "test", "dropped"):  # untouched by augmentation
        assert (aug / f"{name}.jsonl").read_bytes() == (before / f"{name}.jsonl").read_bytes()
    train = _rows(aug / "train.jsonl")
    originals = [row for row in train if "augmented_from" not in row["meta"]]
    added = [row for row in train if "augmented_from" in row["meta"]]
    assert originals == _rows(before / "train.jsonl")
    held_out = [_question(row) for name in ("valid", "test") for row in _rows(aug / f"{name}.jsonl")]
    for row in added:
        for question in held_out + [_question(o) for o in originals]:
            assert normalize(_question(row)) != normalize(question)
            assert similarity(_question(row), question) < THRESHOLD, (_question(row), question)
    # only the honest paraphrases survive: one per train question, right after its original
    assert sorted(_question(row) for row in added) == sorted(PARAPHRASES[_question(o)] for o in originals)
    by_id = {row["meta"]["qa_id"]: row for row in originals}
    for row in added:
        source = by_id[row["meta"]["augmented_from"]]
        assert row["messages"][2] == source["messages"][2] and row["messages"][0] == source["messages"][0]
        assert row["meta"] == {
            **source["meta"],
            "qa_id": row["meta"]["qa_id"],
            "augmented_from": source["meta"]["qa_id"],
            "augment_prompt_hash": row["meta"]["augment_prompt_hash"],
        }
        assert row["meta"]["qa_id"] == f"{source['meta']['qa_id']}-p1"
        assert train.index(row) == train.index(source) + 1
    n = len(originals)
    augment = stats["augment"]
    assert augment["paraphrases_per_question"] == 3
    assert (augment["requested"], augment["returned"], augment["added"]) == (3 * n, 3 * n, n)
    assert (augment["train_before"], augment["train_after"]) == (n, 2 * n)
    assert sum(augment["dropped"].values()) == 2 * n
    assert augment["dropped"]["question too short"] == n // 2
    assert augment["dropped"][DUPLICATE_OF_PARAPHRASE] >= n - n // 2  # "Tell me: ..." (and repeated traps)
    assert augment["dropped"][DUPLICATE_OF_ORIGINAL["exact"]] >= 1  # the copied test question
    assert augment["dropped"][DUPLICATE_OF_ORIGINAL["near"]] >= 1
    assert augment["errors"] == {}
    assert stats["examples"]["train"] == 2 * n and stats["examples"]["test"] == len(_rows(aug / "test.jsonl"))
    usage = json.loads((tmp_path / "usage" / "augment.json").read_text())
    assert (usage["pass"], usage["requests"], usage["calls"]) == ("augment", 3, 3)  # one per train chunk
    assert "## Augmentation (3 paraphrases per train question)" in (aug / "stats.md").read_text()


def test_a_failed_request_skips_its_chunk_with_the_reason(
    tmp_path: Path, fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_video = next(
        v for v, s in split_videos(list(QUESTIONS), DATASET["split"], DATASET["seed"]).items() if s == "train"
    )
    fake_anthropic.respond_with(paraphrase_responder(fail_on=QUESTIONS[train_video][0]))
    inputs = write_inputs(tmp_path / "in")

    stats = build_dataset_out(
        inputs,
        tmp_path,
        "aug",
        passes(inputs, _llm(fake_anthropic, tmp_path, monkeypatch), tmp_path, paraphrases=3),
    )

    augment = stats["augment"]
    assert list(augment["errors"].values()) == [1]
    assert "prompt is too long" in next(iter(augment["errors"]))
    assert augment["requested"] == 3 * augment["train_before"]
    assert augment["returned"] == augment["requested"] - 3 * 2  # the failed chunk's two questions
    augmented_from = {row["meta"].get("augmented_from") for row in _rows(tmp_path / "aug" / "train.jsonl")}
    assert not any(qa_id and qa_id.startswith(train_video) for qa_id in augmented_from)


def build_dataset_out(
    inputs: Inputs, tmp_path: Path, name: str, llm_passes: LLMPasses | None
) -> dict[str, Any]:
    return build_dataset(
        *inputs.args(), dataset_outputs(tmp_path / name), DATASET, tmp_path / "review", llm_passes
    )
