from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tubetune.dataset import build_dataset, split_videos
from tubetune.errors import ConfigError
from tubetune.jsonio import write_json, write_jsonl

CONFIG: dict[str, Any] = {
    "system_prompt": "You are the voice of {channel}.",
    "near_duplicate_threshold": 0.75,
    "min_question_chars": 15,
    "min_answer_chars": 40,
    "max_answer_chars": 2000,
    "max_example_tokens": 1024,
    "split": {"train": 0.6, "valid": 0.2, "test": 0.2},
    "seed": 13,
}
ANSWER = "I preheat the pot for a full 45 minutes at 250 C so the walls are properly hot."


def test_split_is_by_video_seeded_and_complete() -> None:
    videos = [f"video{i:06d}" for i in range(10)]
    a = split_videos(videos, CONFIG["split"], seed=1)
    assert a == split_videos(list(reversed(videos)), CONFIG["split"], seed=1)
    assert a != split_videos(videos, CONFIG["split"], seed=2)
    counts = {name: sum(1 for s in a.values() if s == name) for name in ("train", "valid", "test")}
    assert counts == {"train": 6, "valid": 2, "test": 2}


def test_split_with_too_few_videos_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="add videos or set a split fraction to 0"):
        split_videos(["aaaaaaaaaaa", "bbbbbbbbbbb"], CONFIG["split"], seed=1)


def _qa(qa_id: str, video: str, question: str, answer: str = ANSWER) -> dict[str, Any]:
    return {
        "qa_id": qa_id,
        "question": question,
        "answer": answer,
        "video_id": video,
        "title": f"T {video}",
        "chunk_id": f"{video}-c000",
        "start": 12.0,
        "end": 80.0,
        "url": f"https://youtu.be/{video}?t=12",
    }


def test_build_dataset_dedups_filters_and_counts(tmp_path: Path) -> None:
    videos = [f"vid{i}xxxxxxx"[:11] for i in range(5)]
    qa_paths = []
    pairs = [
        ("Why does rye flour wake up a new starter faster?", "What is hooch and should I pour it off?"),
        ("When do I add the salt to the dough?", "How do I know the levain has peaked?"),
        ("Why dust a banneton with rice flour?", "Should the seam face up in the basket?"),
        ("At what angle do I hold the lame?", "How deep should a single score go?"),
        (
            "How cold should the fridge be for a retard?",
            "What does a slow spring-back mean when poking dough?",
        ),
    ]
    for n, video in enumerate(videos):
        rows = [_qa(f"{video}-q0", video, pairs[n][0]), _qa(f"{video}-q1", video, pairs[n][1])]
        if n == 0:
            rows.append(_qa(f"{video}-q2", video, "How hot should the dutch oven be?", "Hot."))
            rows.append(_qa(f"{video}-q3", video, "To what temperature should I preheat the dutch oven?"))
        if n == 1:
            rows.append(_qa(f"{video}-q2", video, "What temperature should I preheat the dutch oven to?"))
            rows.append(
                _qa(
                    f"{video}-q3",
                    video,
                    "What does the video say about steam?",
                    "In this video I explain that steam keeps the crust soft for the first twenty minutes.",
                )
            )
        path = tmp_path / f"{video}.qa.jsonl"
        write_jsonl(path, rows)
        qa_paths.append(path)
    quarantine = tmp_path / "q.jsonl"
    write_jsonl(quarantine, [{"stage": "validate", "reason": "not a question (no question mark at the end)"}])
    dropped = tmp_path / "d.jsonl"
    write_jsonl(dropped, [{"stage": "answer", "reason": "not answered by its chunk: no freezing advice"}])
    transcript = tmp_path / "t.json"
    write_json(
        transcript,
        {"video_id": "zzzzzzzzzzz", "title": "Gone", "status": "skipped", "reason": "transcripts disabled"},
    )
    selected = tmp_path / "selected.json"
    write_json(selected, {"channel": {"name": "Crumb Lab"}, "videos": []})
    filtered = tmp_path / "filtered.tsv"
    filtered.write_text("video_id\ttitle\treason\nsssssssssss\tA short\tshort (41 s < 120 s)\n")

    stats = build_dataset(
        qa_paths, [transcript], [quarantine], [dropped], selected, filtered, tmp_path / "out", CONFIG
    )

    assert stats["examples"]["total"] == 11
    assert stats["dropped"] == {
        "answer: not answered by its chunk": 1,
        "dedup: near-duplicate question": 1,
        "filter: answer refers to the recording": 1,
        "filter: answer too short": 1,
        "validate: not a question": 1,
    }
    assert [v["video_id"] for v in stats["skipped_videos"]] == ["sssssssssss", "zzzzzzzzzzz"]
    train = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert train[0]["messages"][0] == {"role": "system", "content": "You are the voice of Crumb Lab."}
    md = (tmp_path / "out" / "stats.md").read_text()
    assert "| dedup: near-duplicate question | 1 |" in md
