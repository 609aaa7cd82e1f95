"""Inputs of build_dataset for the tests of its LLM passes (quality judge, augmentation): five videos,
one chunk each, two Q&A pairs per chunk, and the fake API's replies to the two passes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fake_anthropic import Reply, error, ok
from tubetune.config import section_config
from tubetune.dataset.build import DatasetOutputs, LLMPasses
from tubetune.jsonio import write_json, write_jsonl

DATASET: dict[str, Any] = section_config(
    "dataset",
    {"system_prompt": "You are the voice of {channel}.", "split": {"train": 0.6, "valid": 0.2, "test": 0.2}},
)
ANSWER = (
    "Preheat the pot for a full 45 minutes at 250 C so the walls are properly hot before the loaf goes in."
)
VIDEOS = ("aaaaaaaaaaa", "bbbbbbbbbbb", "ccccccccccc", "ddddddddddd", "eeeeeeeeeee")
QUESTIONS = {
    "aaaaaaaaaaa": (
        "Why does rye flour wake up a new starter faster?",
        "What is hooch and should I pour it off?",
    ),
    "bbbbbbbbbbb": ("When do I add the salt to the dough?", "How do I know the levain has peaked?"),
    "ccccccccccc": ("Why dust a banneton with rice flour?", "Should the seam face up in the basket?"),
    "ddddddddddd": ("At what angle do I hold the lame?", "How deep should a single score go?"),
    "eeeeeeeeeee": ("How cold should the fridge be for a retard?", "What does a slow spring-back mean?"),
}
# One honest paraphrase per question (different wording, same meaning).
PARAPHRASES = {
    "Why does rye flour wake up a new starter faster?": "What makes rye get a new culture going quicker?",
    "What is hooch and should I pour it off?": "That grey liquid on my culture: what is it, drain it?",
    "When do I add the salt to the dough?": "At which point in mixing should salt go in?",
    "How do I know the levain has peaked?": "What signs tell me my preferment is at its highest point?",
    "Why dust a banneton with rice flour?": "Why coat the proofing basket in rice powder?",
    "Should the seam face up in the basket?": "Which way round goes the loaf when it proofs: join on top?",
    "At what angle do I hold the lame?": "How far should I tilt the razor blade while slashing?",
    "How deep should a single score go?": "For one cut on top, how far into the loaf do I slice?",
    "How cold should the fridge be for a retard?": "What fridge setting suits an overnight proof?",
    "What does a slow spring-back mean?": "If a poked dent fills back in gradually, what now?",
}
_NUMBERED = re.compile(r"^(\d+)\. Question: (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Inputs:
    """build_dataset's arguments apart from ``outputs``, ``dataset_config`` and ``passes``."""

    qa: list[Path]
    chunk_status: list[Path]
    quarantine: list[Path]
    dropped: list[Path]
    selected: Path
    filtered: Path
    chunks: list[Path]

    def args(self) -> tuple[list[Path], list[Path], list[Path], list[Path], Path, Path]:
        return self.qa, self.chunk_status, self.quarantine, self.dropped, self.selected, self.filtered


def write_inputs(folder: Path) -> Inputs:
    """Five videos, one chunk and two Q&A pairs each, nothing dropped."""
    folder.mkdir(parents=True, exist_ok=True)
    qa, chunks = [], []
    for video in VIDEOS:
        chunk_id = f"{video}-c000"
        rows = [
            {
                "qa_id": f"{chunk_id}-q{n:02d}",
                "question": question,
                "answer": ANSWER,
                "video_id": video,
                "title": f"T {video}",
                "chunk_id": chunk_id,
                "start": 0.0,
                "end": 60.0,
                "url": f"https://youtu.be/{video}?t=0",
            }
            for n, question in enumerate(QUESTIONS[video])
        ]
        qa.append(folder / f"{video}.qa.jsonl")
        write_jsonl(qa[-1], rows)
        chunks.append(folder / f"{video}.chunks.jsonl")
        text = f"so for {video} we preheat the pot for 45 minutes at 250 and the walls get properly hot"
        write_jsonl(
            chunks[-1],
            [
                {
                    "chunk_id": chunk_id,
                    "video_id": video,
                    "title": f"T {video}",
                    "index": 0,
                    "start": 0.0,
                    "end": 60.0,
                    "n_tokens": 20,
                    "text": text,
                }
            ],
        )
    empty = folder / "empty.jsonl"
    write_jsonl(empty, [])
    selected = folder / "selected.json"
    write_json(selected, {"channel": {"name": "Crumb Lab"}, "videos": []})
    filtered = folder / "filtered.tsv"
    filtered.write_text("video_id\ttitle\treason\n")
    return Inputs(qa, [], [empty], [empty], selected, filtered, chunks)


def dataset_outputs(out: Path) -> DatasetOutputs:
    return DatasetOutputs(
        train=out / "train.jsonl",
        valid=out / "valid.jsonl",
        test=out / "test.jsonl",
        dropped=out / "dropped.jsonl",
        skipped=out / "skipped_videos.tsv",
        stats=out / "stats.json",
        stats_md=out / "stats.md",
        lengths=out / "lengths.png",
    )


def passes(
    inputs: Inputs,
    llm: dict[str, Any],
    folder: Path,
    *,
    quality: dict[str, Any] | None = None,
    paraphrases: int = 0,
) -> LLMPasses:
    """Both passes with the repository's prompts; ``quality``: keys of the quality section (off if None)."""
    return LLMPasses(
        llm_config=llm,
        quality_config=section_config("quality", {"enabled": quality is not None, **(quality or {})}),
        augment_config=section_config("augment", {"paraphrases": paraphrases}),
        chunk_paths=inputs.chunks,
        quality_usage=folder / "usage" / "quality.json",
        augment_usage=folder / "usage" / "augment.json",
    )


def numbered_questions(body: dict[str, Any]) -> list[tuple[int, str]]:
    """The numbered questions of a quality or augment request (its first user turn)."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    text = user if isinstance(user, str) else "".join(block["text"] for block in user)
    return [(int(n), q.strip()) for n, q in _NUMBERED.findall(text)]


def schema_kind(body: dict[str, Any]) -> str:
    schema = ((body.get("output_config") or {}).get("format") or {}).get("schema") or {}
    return str(next(iter(schema.get("properties") or {"none": None})))


def rating_responder(
    low: dict[str, tuple[str, int, str]], fail_on: str | None = None
) -> Callable[[dict[str, Any]], Reply]:
    """Ratings: 5 everywhere, except ``low`` (question -> (criterion, rating, reason)); a request holding
    the question ``fail_on`` is refused (400, a failure for good)."""

    def respond(body: dict[str, Any]) -> Reply:
        numbered = numbered_questions(body)
        if fail_on is not None and any(q == fail_on for _, q in numbered):
            return error(400, "invalid_request_error", "prompt is too long")
        ratings = []
        for index, question in numbered:
            item = {
                "index": index,
                "grounded": 5,
                "self_contained": 5,
                "useful": 5,
                "reason": "specific and supported",
            }
            if question in low:
                criterion, rating, reason = low[question]
                item.update({criterion: rating, "reason": reason})
            ratings.append(item)
        return ok(json.dumps({"ratings": ratings}), input_tokens=300, output_tokens=40)

    return respond
