"""The shard jobs' library functions on the sample: transcripts and chunks, questions, answers and review
pages of three videos in one shard (one of them without a transcript), every reply from the sample's
seed cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from test_llm_cost import ROOT, SAMPLE, project_config, question_section
from tubetune.generate.questions import extract_questions
from tubetune.generate.shard import AnswersShard, QuestionsShard, answers_shard, questions_shard
from tubetune.source import list_videos
from tubetune.source.shard import transcripts_shard

VIDEOS = ["Jk5Lz0Xc2Vb", "Nm7Qa3Ws8Ed"]
MISSING = "Zz9Yy8Xx7Ww"  # listed, but no transcript file


@pytest.fixture
def shard(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Path], list[str]]:
    config = project_config()
    config["llm"]["cache_dir"] = str(tmp_path / "cache")  # writable cache: must stay empty
    source = dict(config["source"])
    source.update(listing=str(ROOT / source["listing"]), transcripts_dir=str(SAMPLE / "transcripts"))
    listing = list_videos(source, tmp_path / "selected.json", tmp_path / "filtered.tsv")
    entries = [video.model_dump(mode="json") for video in listing.videos if video.id in VIDEOS]
    missing = {**entries[0], "id": MISSING, "title": "No captions here", "url": f"https://youtu.be/{MISSING}"}
    entries.append(missing)
    folders = {
        name: tmp_path / name for name in ("transcripts", "chunks", "raw", "questions", "qa", "review")
    }
    files = {video: str(SAMPLE / "transcripts" / f"{video}.json") for video in VIDEOS}
    counts = transcripts_shard(
        "s0", entries, source, files, config["chunk"], folders["transcripts"], folders["chunks"], None
    )
    assert counts["videos"] == 3 and counts["stored"] == 0
    return config, folders, [entry["id"] for entry in entries]


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_shard_writes_every_videos_files_from_the_cache(
    shard: tuple[dict[str, Any], dict[str, Path], list[str]], tmp_path: Path
) -> None:
    config, folders, videos = shard
    questions_shard(
        QuestionsShard("s0", videos, folders["chunks"], folders["raw"], folders["questions"]),
        config["questions"]["prompt"],
        config["llm"],
        question_section(config),
        tmp_path / "q_usage.json",
    )
    answers_shard(
        AnswersShard(
            "s0",
            videos,
            folders["transcripts"],
            folders["chunks"],
            folders["questions"],
            folders["qa"],
            folders["review"],
        ),
        config["answers"]["prompt"],
        config["llm"],
        tmp_path / "a_usage.json",
    )
    n_chunks = sum(len(lines(folders["chunks"] / f"{video}.jsonl")) for video in videos)
    q_usage = json.loads((tmp_path / "q_usage.json").read_text())
    assert (q_usage["job"], q_usage["requests"], q_usage["calls"]) == ("questions/s0", n_chunks, 0)
    assert json.loads((tmp_path / "a_usage.json").read_text())["calls"] == 0
    assert not list((tmp_path / "cache").rglob("*.json"))

    for video in VIDEOS:
        raw = lines(folders["raw"] / f"{video}.jsonl")
        assert raw and {row["video_id"] for row in raw} == {video}
        qa = lines(folders["qa"] / f"{video}.jsonl")
        assert qa and {row["video_id"] for row in qa} == {video}
        page = (folders["review"] / f"{video}.md").read_text()
        assert page.count("\n## ") >= len(qa) and qa[0]["question"] in page

    # the video without a transcript: empty files, and a review page that says why
    for folder, suffix in (
        ("chunks", ".jsonl"),
        ("raw", ".jsonl"),
        ("questions", ".jsonl"),
        ("questions", ".quarantine.jsonl"),
        ("qa", ".jsonl"),
        ("qa", ".dropped.jsonl"),
    ):
        assert (folders[folder] / f"{MISSING}{suffix}").read_text() == "", (folder, suffix)
    assert "**Skipped:** no transcript file" in (folders["review"] / f"{MISSING}.md").read_text()

    # one video on its own gives the same extraction records as inside the shard
    alone = tmp_path / "alone.jsonl"
    extract_questions(
        folders["chunks"] / f"{VIDEOS[1]}.jsonl",
        config["questions"]["prompt"],
        alone,
        config["llm"],
        question_section(config),
    )
    assert lines(alone) == lines(folders["raw"] / f"{VIDEOS[1]}.jsonl")
