"""Pass 2 (step 5): answer each question from its own chunk only; unanswerable ones are dropped."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tubetune.errors import TubetuneError
from tubetune.generate.chunk import Chunk
from tubetune.generate.prompts import PromptTemplate, chunk_request, load_prompt
from tubetune.generate.questions import Question, load_chunks
from tubetune.jsonio import read_jsonl, write_json, write_jsonl
from tubetune.llm.batch import PlannedRequest, job_client, run_batch_pass
from tubetune.llm.client import LLMClient
from tubetune.llm.request import LLMRequest
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

logger = logging.getLogger(__name__)

ANSWERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "answerable": {"type": "boolean"},
                    "answer": {"type": "string"},
                    "reason": {"type": "string"},
                },
                "required": ["index", "answerable", "answer", "reason"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["answers"],
    "additionalProperties": False,
}
PLACEHOLDERS = ("title", "start", "end", "chunk", "questions")


def timestamp_url(video_id: str, seconds: float) -> str:
    return f"https://youtu.be/{video_id}?t={int(seconds)}"


def answer_request(
    chunk: Chunk, questions: Sequence[Question], prompt: PromptTemplate, llm: LLMSettings
) -> LLMRequest:
    numbered = "\n".join(f"{i}. {q.question}" for i, q in enumerate(questions, start=1))
    return chunk_request(chunk, prompt, llm, ANSWERS_SCHEMA, questions=numbered)


def check_answers(n_questions: int) -> Any:
    """An extra validator for the LLM layer: every question answered once, fields consistent."""

    def validate(data: Any) -> None:
        answers = data["answers"]
        indices = sorted(a["index"] for a in answers)
        if indices != list(range(1, n_questions + 1)):
            raise ValueError(f"expected one answer for each index 1..{n_questions}, got {indices}")
        for item in answers:
            if item["answerable"] and not item["answer"].strip():
                raise ValueError(f"answer {item['index']} is answerable but empty")
            if not item["answerable"] and not item["reason"].strip():
                raise ValueError(f"answer {item['index']} is not answerable but gives no reason")

    return validate


def load_questions(*questions_paths: str | Path) -> dict[str, list[Question]]:
    """Validated questions of one or more videos grouped by chunk id, in file order."""
    by_chunk: dict[str, list[Question]] = defaultdict(list)
    for row in (row for path in questions_paths for row in read_jsonl(path)):
        question = Question.model_validate(row)
        by_chunk[question.chunk_id].append(question)
    return dict(by_chunk)


def answer_plan(
    chunks: Mapping[str, Chunk],
    by_chunk: Mapping[str, Sequence[Question]],
    prompt: PromptTemplate,
    llm: LLMSettings,
) -> list[tuple[str, list[Question], LLMRequest]]:
    """Every answer request: (chunk id, its questions, request), one request per chunk."""
    return [
        (chunk_id, list(questions), answer_request(chunks[chunk_id], questions, prompt, llm))
        for chunk_id, questions in by_chunk.items()
    ]


def answer_questions(
    questions_path: str | Path,
    chunks_path: str | Path,
    prompt_path: str | Path,
    qa_path: str | Path,
    dropped_path: str | Path,
    llm_config: Mapping[str, Any],
    client: LLMClient | None = None,
    usage_path: str | Path | None = None,
    batch_report: str | Path | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pass 2 for one video (rule ``answers`` runs :func:`answer_chunks` per shard): answer each chunk's
    questions from that chunk alone, up to ``llm.concurrency`` requests at once; the Q&A pairs into
    ``qa_path``, the unanswered questions with the reason into ``dropped_path``.

    ``batch_report`` (``llm.mode: batch``): every reply comes from the cache, filled by the batch
    pass. ``usage_path`` receives what the LLM calls of this job cost.
    """
    started = time.monotonic()
    llm = settings_from(LLMSettings, llm_config, "llm")
    client = job_client(llm, batch_report) if client is None else client
    chunks = load_chunks(chunks_path)
    qa, dropped = answer_chunks(chunks, load_questions(questions_path), prompt_path, llm, client)
    write_jsonl(qa_path, qa)
    write_jsonl(dropped_path, dropped)
    logger.info("%d answered, %d dropped", len(qa), len(dropped))
    client.log_summary()
    if usage_path is not None:
        job = f"answer_questions/{Path(qa_path).stem}"
        write_json(usage_path, client.usage_record("answers", job, time.monotonic() - started))
    return qa, dropped


def answer_chunks(
    chunks: Sequence[Chunk],
    by_chunk: Mapping[str, Sequence[Question]],
    prompt_path: str | Path,
    llm: LLMSettings,
    client: LLMClient,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Q&A pairs of the questions ``by_chunk`` (grouped by chunk id, chunks from ``chunks``) and the
    questions dropped with the reason, one request per chunk through ``client``."""
    prompt = load_prompt(prompt_path, PLACEHOLDERS)
    plan = answer_plan({chunk.chunk_id: chunk for chunk in chunks}, by_chunk, prompt, llm)
    outcomes = client.complete_all(
        [(request, check_answers(len(questions))) for _, questions, request in plan],
        "answer questions",
        "chunk",
    )
    qa: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for (chunk_id, questions, _), outcome in zip(plan, outcomes, strict=True):
        if isinstance(outcome, TubetuneError):
            logger.warning("%s: answers quarantined (%s)", chunk_id, outcome)
            dropped.extend(_dropped(q, "answer request quarantined: " + str(outcome)) for q in questions)
            continue
        for item in sorted(outcome.data["answers"], key=lambda a: a["index"]):
            question = questions[item["index"] - 1]
            if item["answerable"]:
                qa.append(qa_pair(question, item["answer"], prompt.hash))
            else:
                dropped.append(_dropped(question, "not answered by its chunk: " + item["reason"].strip()))
    return qa, dropped


def qa_pair(question: Question, answer: str, answer_prompt_hash: str) -> dict[str, Any]:
    """One line of the Q&A file: the question, its answer and where both come from."""
    return {
        "qa_id": question.question_id,
        "question": question.question,
        "answer": " ".join(answer.split()),
        "video_id": question.video_id,
        "title": question.title,
        "chunk_id": question.chunk_id,
        "start": question.start,
        "end": question.end,
        "url": timestamp_url(question.video_id, question.start),
        "question_prompt_hash": question.prompt_hash,
        "answer_prompt_hash": answer_prompt_hash,
    }


def batch_answers(
    question_paths: Sequence[str | Path],
    chunk_paths: Sequence[str | Path],
    prompt_path: str | Path,
    report_path: str | Path,
    llm_config: Mapping[str, Any],
) -> dict[str, Any]:
    """Rule ``batch_answers`` (``llm.mode: batch``): every video's answer requests through Message
    Batches, into the cache; the pass's report into ``report_path``."""
    llm = settings_from(LLMSettings, llm_config, "llm")
    prompt = load_prompt(prompt_path, PLACEHOLDERS)
    chunks = {chunk.chunk_id: chunk for chunk in load_chunks(*chunk_paths)}
    planned: list[PlannedRequest] = []
    for path in question_paths:
        for chunk_id, questions, request in answer_plan(chunks, load_questions(path), prompt, llm):
            planned.append(PlannedRequest(request, check_answers(len(questions)), chunk_id))
    report = run_batch_pass("answers", planned, LLMClient(llm))
    write_json(report_path, report)
    return report


def _dropped(question: Question, reason: str) -> dict[str, Any]:
    return {**question.model_dump(), "stage": "answer", "reason": reason}
