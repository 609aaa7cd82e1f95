"""The LLM steps of one shard of videos (rules ``questions`` and ``answers``, see tubetune.shards).

Each job sends the requests of all its videos through one LLM client, so up to ``llm.concurrency``
requests are in flight across the shard, and writes one usage record for the ledger. The files of each
video are those the per-video functions write (:func:`~tubetune.generate.questions.validate_questions`,
:func:`~tubetune.generate.review.review`), in the shard's folder of each step.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tubetune.generate.answers import answer_chunks, load_questions
from tubetune.generate.questions import extraction_records, load_chunks, validate_questions
from tubetune.generate.review import review
from tubetune.jsonio import write_json, write_jsonl
from tubetune.llm.batch import job_client
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from
from tubetune.shards import video_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuestionsShard:
    """The folders of one shard the rule ``questions`` reads and writes."""

    shard: str
    videos: Sequence[str]
    chunks: str | Path  # <video>.jsonl
    raw: str | Path  # <video>.jsonl: one extraction record per chunk
    questions: str | Path  # <video>.jsonl and <video>.quarantine.jsonl


@dataclass(frozen=True)
class AnswersShard:
    """The folders of one shard the rule ``answers`` reads and writes."""

    shard: str
    videos: Sequence[str]
    transcripts: str | Path  # <video>.json
    chunks: str | Path  # <video>.jsonl
    questions: str | Path  # <video>.jsonl and <video>.quarantine.jsonl
    qa: str | Path  # <video>.jsonl and <video>.dropped.jsonl
    review: str | Path  # <video>.md


def _by_video(rows: Sequence[Mapping[str, Any]], videos: Sequence[str]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[str(row["video_id"])].append(row)
    return {video: grouped.get(video, []) for video in videos}


def questions_shard(
    shard: QuestionsShard,
    prompt_path: str | Path,
    llm_config: Mapping[str, Any],
    question_config: Mapping[str, Any],
    usage_path: str | Path,
    batch_report: str | Path | None = None,
) -> int:
    """Rule ``questions``: pass 1 (questions per chunk) and their validation for every video of
    ``shard``; returns the number of questions kept.

    With ``batch_report`` (``llm.mode: batch``) every reply comes from the cache the batch pass filled.
    """
    started = time.monotonic()
    llm = settings_from(LLMSettings, llm_config, "llm")
    client = job_client(llm, batch_report)
    chunks = load_chunks(*(video_path(shard.chunks, video, ".jsonl") for video in shard.videos))
    records = extraction_records(chunks, prompt_path, llm, question_config, client)
    Path(shard.raw).mkdir(parents=True, exist_ok=True)
    Path(shard.questions).mkdir(parents=True, exist_ok=True)
    kept = 0
    for video, rows in _by_video(records, shard.videos).items():
        raw = video_path(shard.raw, video, ".jsonl")
        write_jsonl(raw, rows)
        good, _ = validate_questions(
            raw_path=raw,
            chunks_path=video_path(shard.chunks, video, ".jsonl"),
            questions_path=video_path(shard.questions, video, ".jsonl"),
            quarantine_path=video_path(shard.questions, video, ".quarantine.jsonl"),
            question_config=question_config,
        )
        kept += len(good)
    logger.info(
        "shard %s: %d videos, %d chunks, %d questions kept", shard.shard, len(shard.videos), len(chunks), kept
    )
    client.log_summary()
    write_json(
        usage_path, client.usage_record("questions", f"questions/{shard.shard}", time.monotonic() - started)
    )
    return kept


def answers_shard(
    shard: AnswersShard,
    prompt_path: str | Path,
    llm_config: Mapping[str, Any],
    usage_path: str | Path,
    batch_report: str | Path | None = None,
) -> int:
    """Rule ``answers``: pass 2 (each chunk's questions answered from that chunk alone) for every video of
    ``shard``, then each video's review page; returns the number of Q&A pairs."""
    started = time.monotonic()
    llm = settings_from(LLMSettings, llm_config, "llm")
    client = job_client(llm, batch_report)
    chunks = load_chunks(*(video_path(shard.chunks, video, ".jsonl") for video in shard.videos))
    by_chunk = load_questions(*(video_path(shard.questions, video, ".jsonl") for video in shard.videos))
    qa, dropped = answer_chunks(chunks, by_chunk, prompt_path, llm, client)
    for folder in (shard.qa, shard.review):
        Path(folder).mkdir(parents=True, exist_ok=True)
    qa_by_video, dropped_by_video = _by_video(qa, shard.videos), _by_video(dropped, shard.videos)
    for video in shard.videos:
        qa_file = video_path(shard.qa, video, ".jsonl")
        dropped_file = video_path(shard.qa, video, ".dropped.jsonl")
        write_jsonl(qa_file, qa_by_video[video])
        write_jsonl(dropped_file, dropped_by_video[video])
        review(
            transcript_path=video_path(shard.transcripts, video, ".json"),
            qa_path=qa_file,
            dropped_path=dropped_file,
            quarantine_path=video_path(shard.questions, video, ".quarantine.jsonl"),
            page_path=video_path(shard.review, video, ".md"),
        )
    logger.info(
        "shard %s: %d videos, %d answered, %d dropped", shard.shard, len(shard.videos), len(qa), len(dropped)
    )
    client.log_summary()
    write_json(
        usage_path, client.usage_record("answers", f"answers/{shard.shard}", time.monotonic() - started)
    )
    return len(qa)
