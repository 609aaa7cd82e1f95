"""Pass 1: questions from each chunk (step 3), then their validation (step 4)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tubetune.errors import ConfigError, TubetuneError
from tubetune.generate.chunk import Chunk
from tubetune.generate.prompts import PromptTemplate, chunk_request, load_prompt
from tubetune.jsonio import read_jsonl, write_json, write_jsonl
from tubetune.llm.batch import PlannedRequest, job_client, run_batch_pass
from tubetune.llm.client import LLMClient, LLMResult
from tubetune.llm.request import LLMRequest
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

logger = logging.getLogger(__name__)

QUESTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"questions": {"type": "array", "items": {"type": "string"}}},
    "required": ["questions"],
    "additionalProperties": False,
}
PLACEHOLDERS = ("title", "start", "end", "chunk", "n_questions")
# Questions that only make sense next to the recording.
_META_REFERENCE = re.compile(
    r"\b(the|this) (video|transcript|excerpt|speaker|host|clip|episode)\b|\bin the (video|transcript)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class QuestionSettings:
    """The config section ``questions`` without its prompt (the prompt file is a rule input).

    Built with ``settings_from(QuestionSettings, values, "questions")``.
    """

    per_1k_tokens: float
    min_per_chunk: int
    max_per_chunk: int
    min_chars: int
    max_chars: int

    def __post_init__(self) -> None:
        if self.min_per_chunk > self.max_per_chunk:
            raise ConfigError(
                f"config error: questions.min_per_chunk ({self.min_per_chunk}) is above "
                f"questions.max_per_chunk ({self.max_per_chunk})"
            )
        if self.min_chars > self.max_chars:
            raise ConfigError(
                f"config error: questions.min_chars ({self.min_chars}) is above "
                f"questions.max_chars ({self.max_chars})"
            )

    def count_for(self, n_tokens: int) -> int:
        """How many questions a chunk of ``n_tokens`` is asked for."""
        wanted = round(n_tokens / 1000 * self.per_1k_tokens)
        return max(self.min_per_chunk, min(self.max_per_chunk, wanted))


def extraction_request(
    chunk: Chunk, prompt: PromptTemplate, n_questions: int, llm: LLMSettings
) -> LLMRequest:
    return chunk_request(chunk, prompt, llm, QUESTIONS_SCHEMA, n_questions=n_questions)


def load_chunks(*paths: str | Path) -> list[Chunk]:
    """The chunks of one or more chunk files, in order."""
    return [Chunk.from_dict(row) for path in paths for row in read_jsonl(path)]


def extraction_plan(
    chunks: Sequence[Chunk], prompt: PromptTemplate, settings: QuestionSettings, llm: LLMSettings
) -> list[tuple[Chunk, int, LLMRequest]]:
    """Every extraction request of ``chunks``: (chunk, questions asked for, request)."""
    plan = []
    for chunk in chunks:
        n_questions = settings.count_for(chunk.n_tokens)
        plan.append((chunk, n_questions, extraction_request(chunk, prompt, n_questions, llm)))
    return plan


def extract_questions(
    chunks_path: str | Path,
    prompt_path: str | Path,
    questions_path: str | Path,
    llm_config: Mapping[str, Any],
    question_config: Mapping[str, Any],
    client: LLMClient | None = None,
    usage_path: str | Path | None = None,
    batch_report: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Pass 1 for one video (rule ``questions`` runs :func:`extraction_records` per shard): ask the LLM
    for questions per chunk; one record per chunk into ``questions_path``, quarantined ones with the
    reason.

    Up to ``llm.concurrency`` requests are in flight at once. Responses are cached by the LLM layer
    as they arrive; a chunk whose output stays invalid after the re-asks, or whose calls keep
    failing, is recorded as quarantined instead of stopping the run. With ``batch_report`` (the
    batch pass's report, ``llm.mode: batch``) every reply comes from the cache and nothing is sent.
    ``usage_path`` receives what the LLM calls of this job cost (the ledger's input).
    """
    started = time.monotonic()
    llm = settings_from(LLMSettings, llm_config, "llm")
    client = job_client(llm, batch_report) if client is None else client
    records = extraction_records(load_chunks(chunks_path), prompt_path, llm, question_config, client)
    write_jsonl(questions_path, records)
    client.log_summary()
    if usage_path is not None:
        job = f"extract_questions/{Path(questions_path).stem}"
        write_json(usage_path, client.usage_record("questions", job, time.monotonic() - started))
    return records


def extraction_records(
    chunks: Sequence[Chunk],
    prompt_path: str | Path,
    llm: LLMSettings,
    question_config: Mapping[str, Any],
    client: LLMClient,
) -> list[dict[str, Any]]:
    """The raw questions record of every chunk (:func:`extraction_record`), the requests sent through
    ``client`` up to ``llm.concurrency`` at once."""
    settings = settings_from(QuestionSettings, question_config, "questions")
    prompt = load_prompt(prompt_path, PLACEHOLDERS)
    plan = extraction_plan(chunks, prompt, settings, llm)
    outcomes = client.complete_all([(request, None) for _, _, request in plan], "extract questions", "chunk")
    return [
        extraction_record(chunk, n_questions, request, outcome, prompt.hash)
        for (chunk, n_questions, request), outcome in zip(plan, outcomes, strict=True)
    ]


def extraction_record(
    chunk: Chunk, n_questions: int, request: LLMRequest, outcome: LLMResult | TubetuneError, prompt_hash: str
) -> dict[str, Any]:
    """The line of the raw questions file for one chunk: its questions, or why it is quarantined."""
    record: dict[str, Any] = {
        "chunk_id": chunk.chunk_id,
        "video_id": chunk.video_id,
        "n_requested": n_questions,
        "prompt_hash": prompt_hash,
        "request_key": request.key(),
    }
    if isinstance(outcome, TubetuneError):
        logger.warning("%s: quarantined (%s)", chunk.chunk_id, outcome)
        return record | {"status": "quarantined", "reason": str(outcome), "questions": []}
    return record | {"status": "ok", "reason": None, "questions": list(outcome.data["questions"])}


def batch_questions(
    chunk_paths: Sequence[str | Path],
    prompt_path: str | Path,
    report_path: str | Path,
    llm_config: Mapping[str, Any],
    question_config: Mapping[str, Any],
) -> dict[str, Any]:
    """Rule ``batch_questions`` (``llm.mode: batch``): every video's extraction requests through
    Message Batches, into the cache; the pass's report into ``report_path``."""
    llm = settings_from(LLMSettings, llm_config, "llm")
    settings = settings_from(QuestionSettings, question_config, "questions")
    planned = [
        PlannedRequest(request, None, chunk.chunk_id)
        for chunk, _, request in extraction_plan(
            load_chunks(*chunk_paths), load_prompt(prompt_path, PLACEHOLDERS), settings, llm
        )
    ]
    report = run_batch_pass("questions", planned, LLMClient(llm))
    write_json(report_path, report)
    return report


class Question(BaseModel):
    """A validated question with its provenance."""

    model_config = ConfigDict(frozen=True)

    question_id: str
    question: str = Field(min_length=1)
    video_id: str
    title: str
    chunk_id: str
    start: float
    end: float
    prompt_hash: str

    @field_validator("question")
    @classmethod
    def _normalize(cls, value: str) -> str:
        return " ".join(value.split())

    @classmethod
    def of_chunk(cls, chunk: Chunk, number: int, text: str, prompt_hash: str) -> Question:
        """Question ``number`` (from 0) of ``chunk``; its id is ``<chunk id>-q<number>``."""
        return cls(
            question_id=f"{chunk.chunk_id}-q{number:02d}",
            question=text,
            video_id=chunk.video_id,
            title=chunk.title,
            chunk_id=chunk.chunk_id,
            start=chunk.start,
            end=chunk.end,
            prompt_hash=prompt_hash,
        )


def question_problem(text: str, settings: QuestionSettings) -> str | None:
    """Why a question is unusable, or None."""
    text = " ".join(text.split())
    if len(text) < settings.min_chars:
        return f"too short ({len(text)} < {settings.min_chars} characters)"
    if len(text) > settings.max_chars:
        return f"too long ({len(text)} > {settings.max_chars} characters)"
    if not text.endswith("?"):
        return "not a question (no question mark at the end)"
    if _META_REFERENCE.search(text):
        return "refers to the recording instead of the subject"
    return None


def check_record(
    record: Mapping[str, Any], chunk: Chunk, settings: QuestionSettings
) -> tuple[list[Question], list[dict[str, Any]]]:
    """The usable questions of one extraction record of ``chunk``, and the quarantined ones with reasons."""
    if record.get("status") != "ok":
        return [], [{**_where(record), "stage": "extract", "reason": record.get("reason")}]
    kept: list[Question] = []
    quarantined: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, text in enumerate(_as_list(record.get("questions"))):
        where = {**_where(record), "question": text}
        if not isinstance(text, str):
            quarantined.append({**where, "stage": "validate", "reason": "not a string"})
            continue
        problem = question_problem(text, settings)
        folded = " ".join(text.lower().split())
        if problem is None and folded in seen:
            problem = "repeats another question of the same chunk"
        if problem is not None:
            quarantined.append({**where, "stage": "validate", "reason": problem})
            continue
        seen.add(folded)
        try:
            kept.append(Question.of_chunk(chunk, number, text, str(record.get("prompt_hash", ""))))
        except ValidationError as exc:
            quarantined.append({**where, "stage": "validate", "reason": exc.errors()[0]["msg"]})
    return kept, quarantined


def validate_questions(
    raw_path: str | Path,
    chunks_path: str | Path,
    questions_path: str | Path,
    quarantine_path: str | Path,
    question_config: Mapping[str, Any],
) -> tuple[list[Question], list[dict[str, Any]]]:
    """One video's questions, validated (in rule ``questions``, after pass 1): keep well-formed,
    self-contained, distinct questions; quarantine the rest with the reason."""
    settings = settings_from(QuestionSettings, question_config, "questions")
    chunks = {chunk.chunk_id: chunk for chunk in load_chunks(chunks_path)}
    kept: list[Question] = []
    quarantined: list[dict[str, Any]] = []
    for record in read_jsonl(raw_path):
        chunk = chunks.get(record.get("chunk_id", ""))
        if chunk is None:
            quarantined.append({**_where(record), "stage": "validate", "reason": "unknown chunk id"})
            continue
        good, bad = check_record(record, chunk, settings)
        kept.extend(good)
        quarantined.extend(bad)
    write_jsonl(questions_path, (q.model_dump() for q in kept))
    write_jsonl(quarantine_path, quarantined)
    for row in quarantined:
        logger.info("quarantined %s: %s", row.get("chunk_id"), row["reason"])
    logger.info("%d questions kept, %d quarantined", len(kept), len(quarantined))
    return kept, quarantined


def _where(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"video_id": record.get("video_id"), "chunk_id": record.get("chunk_id")}


def _as_list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else []
