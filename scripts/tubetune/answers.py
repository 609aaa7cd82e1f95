"""Pass 2 (step 5): answer each question from its own chunk only; unanswerable ones are dropped."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tubetune.chunking import Chunk
from tubetune.jsonio import read_jsonl, write_jsonl
from tubetune.llm.client import BackendError, InvalidOutputError, LLMClient
from tubetune.llm.request import LLMRequest, Message
from tubetune.llm.settings import LLMSettings
from tubetune.prompts import PromptTemplate, format_seconds, load_prompt
from tubetune.questions import Question, load_chunks

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
    user = prompt.render(
        title=chunk.title,
        start=format_seconds(chunk.start),
        end=format_seconds(chunk.end),
        chunk=chunk.text,
        questions=numbered,
    )
    return LLMRequest(
        backend=llm.backend,
        model=llm.request_model,
        system=prompt.system,
        messages=(Message("user", user),),
        output_schema=ANSWERS_SCHEMA,
        max_tokens=llm.max_tokens,
    )


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


def answer_questions(
    questions_path: str | Path,
    chunks_path: str | Path,
    prompt_path: str | Path,
    out_path: str | Path,
    dropped_path: str | Path,
    llm_config: Mapping[str, Any],
    client: LLMClient | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    llm = LLMSettings.from_config(llm_config)
    prompt = load_prompt(prompt_path, PLACEHOLDERS)
    client = client or LLMClient(llm)
    chunks = {chunk.chunk_id: chunk for chunk in load_chunks(chunks_path)}
    by_chunk: dict[str, list[Question]] = defaultdict(list)
    for row in read_jsonl(questions_path):
        question = Question.model_validate(row)
        by_chunk[question.chunk_id].append(question)

    qa: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    for chunk_id, questions in tqdm(by_chunk.items(), desc="answer questions", unit="chunk"):
        chunk = chunks[chunk_id]
        request = answer_request(chunk, questions, prompt, llm)
        try:
            result = client.complete_json(request, validate=check_answers(len(questions)))
        except (InvalidOutputError, BackendError) as exc:
            logger.warning("%s: answers quarantined (%s)", chunk_id, exc)
            dropped.extend(_dropped(q, "answer request quarantined: " + str(exc)) for q in questions)
            continue
        for item in sorted(result.data["answers"], key=lambda a: a["index"]):
            question = questions[item["index"] - 1]
            if not item["answerable"]:
                dropped.append(_dropped(question, "not answered by its chunk: " + item["reason"].strip()))
                continue
            qa.append(
                {
                    "qa_id": question.question_id,
                    "question": question.question,
                    "answer": " ".join(item["answer"].split()),
                    "video_id": question.video_id,
                    "title": question.title,
                    "chunk_id": question.chunk_id,
                    "start": question.start,
                    "end": question.end,
                    "url": timestamp_url(question.video_id, question.start),
                    "question_prompt_hash": question.prompt_hash,
                    "answer_prompt_hash": prompt.hash,
                }
            )
    write_jsonl(out_path, qa)
    write_jsonl(dropped_path, dropped)
    logger.info("%d answered, %d dropped", len(qa), len(dropped))
    client.log_summary()
    return qa, dropped


def _dropped(question: Question, reason: str) -> dict[str, Any]:
    return {**question.model_dump(), "stage": "answer", "reason": reason}
