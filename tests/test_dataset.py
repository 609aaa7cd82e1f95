from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dataset_inputs import dataset_outputs
from tubetune.config import section_config
from tubetune.dataset.build import DatasetSettings, build_dataset, split_videos
from tubetune.errors import ConfigError, TubetuneError
from tubetune.generate.chunk import chunk
from tubetune.jsonio import write_json, write_jsonl
from tubetune.settings import settings_from

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
CHUNK_CONFIG = {"max_tokens": 600, "min_tokens": 120, "min_words": 150}
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


def test_split_fractions_must_add_up_to_one() -> None:
    section = section_config("dataset", {"split": {"train": 0.8, "valid": 0.3, "test": 0.1}})
    message = r"^config error: dataset.split fractions must add up to 1 \(they add up to 1.2\)$"
    with pytest.raises(ConfigError, match=message):
        settings_from(DatasetSettings, section, "dataset")


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


def _transcript(video: str, texts: list[str]) -> dict[str, Any]:
    snippets = [{"text": text, "start": 2.0 * i, "duration": 2.0} for i, text in enumerate(texts)]
    return {"video_id": video, "title": f"T {video}", "status": "ok", "snippets": snippets}


def _chunk_status(tmp_path: Path, transcript: dict[str, Any]) -> Path:
    """The chunk status file the chunk step writes for ``transcript``."""
    video = transcript["video_id"]
    path, status = tmp_path / f"{video}.transcript.json", tmp_path / f"{video}.status.json"
    write_json(path, transcript)
    chunk(path, tmp_path / f"{video}.chunks.jsonl", status, CHUNK_CONFIG)
    return status


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
    gone = _chunk_status(
        tmp_path,
        {"video_id": "zzzzzzzzzzz", "title": "Gone", "status": "skipped", "reason": "transcripts disabled"},
    )
    music = _chunk_status(tmp_path, _transcript("mmmmmmmmmmm", ["[Music]", "you", "[Music] you you"]))
    selected = tmp_path / "selected.json"
    write_json(selected, {"channel": {"name": "Crumb Lab"}, "videos": []})
    filtered = tmp_path / "filtered.tsv"
    filtered.write_text("video_id\ttitle\treason\nsssssssssss\tA short\tshort (41 s < 120 s)\n")

    stats = build_dataset(
        qa_paths, [gone, music], [quarantine], [dropped], selected, filtered,
        dataset_outputs(tmp_path / "out"), CONFIG, tmp_path / "review",
    )

    assert stats["examples"]["total"] == 11
    assert stats["dropped"] == {
        "answer: not answered by its chunk": 1,
        "dedup: near-duplicate question": 1,
        "filter: answer refers to the recording": 1,
        "filter: answer too short": 1,
        "validate: not a question": 1,
    }
    assert [v["video_id"] for v in stats["skipped_videos"]] == ["sssssssssss", "zzzzzzzzzzz", "mmmmmmmmmmm"]
    skipped_tsv = (tmp_path / "out" / "skipped_videos.tsv").read_text().splitlines()
    assert skipped_tsv[2] == "zzzzzzzzzzz\tGone\ttranscript\ttranscripts disabled"
    assert skipped_tsv[3] == (
        "mmmmmmmmmmm\tT mmmmmmmmmmm\tchunk\t"
        "too little speech: 3 words after removing caption artifacts (chunk.min_words: 150)"
    )
    train = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert train[0]["messages"][0] == {"role": "system", "content": "You are the voice of Crumb Lab."}
    md = (tmp_path / "out" / "stats.md").read_text()
    assert "| dedup: near-duplicate question | 1 |" in md


def _three_videos(tmp_path: Path) -> tuple[list[Path], list[Path], list[Path], list[Path], Path, Path]:
    """build_dataset's inputs for three videos with one good Q&A pair each and nothing dropped."""
    questions = ["Why does rye flour wake up a starter?", "When do I add the salt?", "How deep is a score?"]
    qa_paths = []
    for n, question in enumerate(questions):
        video = f"video{n}xxxxx"[:11]
        qa_paths.append(tmp_path / f"{video}.qa.jsonl")
        write_jsonl(qa_paths[-1], [_qa(f"{video}-q0", video, question)])
    empty = tmp_path / "empty.jsonl"
    write_jsonl(empty, [])
    selected = tmp_path / "selected.json"
    write_json(selected, {"channel": {"name": "Crumb Lab"}, "videos": []})
    filtered = tmp_path / "filtered.tsv"
    filtered.write_text("video_id\ttitle\treason\n")
    return qa_paths, [], [empty], [empty], selected, filtered


def test_stats_link_the_llm_ledger_instead_of_copying_its_total(tmp_path: Path) -> None:
    # The ledger sums the usage records of build_dataset's own LLM passes, so it cannot be an input.
    out = tmp_path / "out"

    stats = build_dataset(*_three_videos(tmp_path), dataset_outputs(out), CONFIG, tmp_path / "review")

    assert "llm" not in stats
    md = (out / "stats.md").read_text()
    assert "## LLM cost" not in md
    assert md.rstrip().endswith(
        "LLM cost of the passes behind this dataset: [results/llm/ledger.md](../llm/ledger.md)."
    )


def _only_quarantined(tmp_path: Path) -> list[Path]:
    """What a tiny teacher leaves: every question quarantined, one answer request dropped."""
    quarantine = tmp_path / "q.jsonl"
    rows = [{"stage": "validate", "question": "...", "reason": "not a question (no question mark)"}] * 40
    rows += [{"stage": "validate", "question": "Why?", "reason": "too short (4 < 12 characters)"}] * 8
    rows += [{"stage": "extract", "reason": "invalid output: not JSON"}] * 2
    rows += [{"stage": "validate", "question": "Salt?", "reason": "no content word"}]
    write_jsonl(quarantine, rows)
    dropped = tmp_path / "d.jsonl"
    write_jsonl(dropped, [{"stage": "answer", "question": "Who?", "reason": "not answered by its chunk: no"}])
    return [quarantine, dropped]


def test_no_usable_qa_names_the_reasons(tmp_path: Path) -> None:
    quarantine, dropped = _only_quarantined(tmp_path)
    qa = tmp_path / "qa.jsonl"
    write_jsonl(qa, [_qa("aaaaaaaaaaa-q0", "aaaaaaaaaaa", "How hot should the dutch oven be?", "Hot.")])
    words = " ".join(f"word{i}" for i in range(300))
    status = _chunk_status(tmp_path, _transcript("aaaaaaaaaaa", [words]))
    selected = tmp_path / "selected.json"
    write_json(selected, {"channel": {"name": "Crumb Lab"}, "videos": []})
    filtered = tmp_path / "filtered.tsv"
    filtered.write_text("video_id\ttitle\treason\n")

    with pytest.raises(TubetuneError) as caught:
        build_dataset(
            [qa], [status], [quarantine], [dropped], selected, filtered,
            dataset_outputs(tmp_path / "out"), CONFIG, tmp_path / "review",
        )

    assert str(caught.value) == (
        "no usable Q&A: 0 of 51 questions from 1 chunk survived "
        "(quarantined: 40 not a question, 8 too short, 2 invalid output, 1 other; "
        "dropped: 1 not answered by its chunk, 1 answer too short); "
        f"check the LLM (llm.backend/llm.model) and {(tmp_path / 'review').as_posix()}/"
    )
    assert "\n" not in str(caught.value)


def test_no_video_with_speech_names_the_skip_reasons(tmp_path: Path) -> None:
    statuses = [
        _chunk_status(tmp_path, _transcript(f"music{i}xxxxx"[:11], ["[Music]", "you you", "(applause)"]))
        for i in range(3)
    ]
    empty = tmp_path / "empty.jsonl"
    write_jsonl(empty, [])
    selected = tmp_path / "selected.json"
    write_json(selected, {"channel": {"name": "Crumb Lab"}, "videos": []})
    filtered = tmp_path / "filtered.tsv"
    filtered.write_text("video_id\ttitle\treason\nsssssssssss\tA short\tshort (41 s < 120 s)\n")

    with pytest.raises(
        TubetuneError,
        match=r"^no usable Q&A: no video has chunks to ask questions about "
        r"\(skipped videos: 3 too little speech, 1 short\); "
        r"check the source \(source\.\*\) and chunk\.min_words$",
    ):
        build_dataset(
            [empty], statuses, [empty], [empty], selected, filtered,
            dataset_outputs(tmp_path / "out"), CONFIG, tmp_path / "review",
        )
