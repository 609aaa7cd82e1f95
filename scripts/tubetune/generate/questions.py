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

from tubetune.errors import TubetuneError
from tubetune.generate.chunk import Chunk
from tubetune.generate.prompts import PromptTemplate, format_seconds, load_prompt
from tubetune.jsonio import read_jsonl, write_json, write_jsonl
from tubetune.llm.batch import BatchResultBackend, PlannedRequest, run_batch_pass
from tubetune.llm.client import LLMClient
from tubetune.llm.request import LLMRequest, Message
from tubetune.llm.settings import LLMSettings

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
    per_1k_tokens: float
    min_per_chunk: int
    max_per_chunk: int
    min_chars: int = 12
    max_chars: int = 300

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> QuestionSettings:
        return cls(
            per_1k_tokens=float(config["per_1k_tokens"]),
            min_per_chunk=int(config["min_per_chunk"]),
            max_per_chunk=int(config["max_per_chunk"]),
            min_chars=int(config.get("min_chars", 12)),
            max_chars=int(config.get("max_chars", 300)),
        )

    def count_for(self, n_tokens: int) -> int:
        """How many questions a chunk of ``n_tokens`` is asked for."""
        wanted = round(n_tokens / 1000 * self.per_1k_tokens)
        return max(self.min_per_chunk, min(self.max_per_chunk, wanted))


def extraction_request(
    chunk: Chunk, prompt: PromptTemplate, n_questions: int, llm: LLMSettings
) -> LLMRequest:
    user = prompt.render(
        title=chunk.title,
        start=format_seconds(chunk.start),
        end=format_seconds(chunk.end),
        chunk=chunk.text,
        n_questions=n_questions,
    )
    return LLMRequest(
        backend=llm.backend,
        model=llm.request_model,
        system=prompt.system,
        messages=(Message("user", user),),
        output_schema=QUESTIONS_SCHEMA,
        max_tokens=llm.max_tokens,
    )


def load_chunks(path: str | Path) -> list[Chunk]:
    return [Chunk.from_dict(row) for row in read_jsonl(path)]


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
    out_path: str | Path,
    llm_config: Mapping[str, Any],
    question_config: Mapping[str, Any],
    client: LLMClient | None = None,
    usage_path: str | Path | None = None,
    batch_report: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Ask the LLM for questions per chunk; one record per chunk, quarantined ones with the reason.

    Up to ``llm.concurrency`` requests are in flight at once. Responses are cached by the LLM layer
    as they arrive; a chunk whose output stays invalid after the re-asks, or whose calls keep
    failing, is recorded as quarantined instead of stopping the run. With ``batch_report`` (the
    batch pass's report, ``llm.mode: batch``) every reply comes from the cache and nothing is sent.
    ``usage_path`` receives what the LLM calls of this job cost (the ledger's input).
    """
    started = time.monotonic()
    llm = LLMSettings.from_config(llm_config)
    settings = QuestionSettings.from_config(question_config)
    prompt = load_prompt(prompt_path, PLACEHOLDERS)
    if client is None:
        client = LLMClient(llm, backend=BatchResultBackend(batch_report) if batch_report else None)
    plan = extraction_plan(load_chunks(chunks_path), prompt, settings, llm)
    outcomes = client.complete_all([(request, None) for _, _, request in plan], "extract questions", "chunk")
    records: list[dict[str, Any]] = []
    for (chunk, n_questions, request), outcome in zip(plan, outcomes, strict=True):
        record: dict[str, Any] = {
            "chunk_id": chunk.chunk_id,
            "video_id": chunk.video_id,
            "n_requested": n_questions,
            "prompt_hash": prompt.hash,
            "request_key": request.key(),
        }
        if isinstance(outcome, TubetuneError):
            logger.warning("%s: quarantined (%s)", chunk.chunk_id, outcome)
            record.update(status="quarantined", reason=str(outcome), questions=[])
        else:
            record.update(status="ok", reason=None, questions=list(outcome.data["questions"]))
        records.append(record)
    write_jsonl(out_path, records)
    client.log_summary()
    if usage_path is not None:
        job = f"extract_questions/{Path(out_path).stem}"
        write_json(usage_path, client.usage_record("questions", job, time.monotonic() - started))
    return records


def batch_questions(
    chunk_paths: Sequence[str | Path],
    prompt_path: str | Path,
    out_path: str | Path,
    llm_config: Mapping[str, Any],
    question_config: Mapping[str, Any],
) -> dict[str, Any]:
    """``llm.mode: batch``: every video's extraction requests through Message Batches, into the cache."""
    llm = LLMSettings.from_config(llm_config)
    settings = QuestionSettings.from_config(question_config)
    prompt = load_prompt(prompt_path, PLACEHOLDERS)
    chunks = [chunk for path in chunk_paths for chunk in load_chunks(path)]
    planned = [
        PlannedRequest(request, None, chunk.chunk_id)
        for chunk, _, request in extraction_plan(chunks, prompt, settings, llm)
    ]
    report = run_batch_pass("questions", planned, LLMClient(llm))
    write_json(out_path, report)
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
    out_path: str | Path,
    quarantine_path: str | Path,
    question_config: Mapping[str, Any],
) -> tuple[list[Question], list[dict[str, Any]]]:
    """Keep well-formed, self-contained, distinct questions; quarantine the rest with the reason."""
    settings = QuestionSettings.from_config(question_config)
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
    write_jsonl(out_path, (q.model_dump() for q in kept))
    write_jsonl(quarantine_path, quarantined)
    for row in quarantined:
        logger.info("quarantined %s: %s", row.get("chunk_id"), row["reason"])
    logger.info("%d questions kept, %d quarantined", len(kept), len(quarantined))
    return kept, quarantined


def _where(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"video_id": record.get("video_id"), "chunk_id": record.get("chunk_id")}


def _as_list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else []
