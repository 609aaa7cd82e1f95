"""Rule judge: an LLM compares the base and the tuned answer of every test question, in both orders.

For each row of ``results/eval/answers.jsonl`` two requests go through the LLM layer (response cache,
anthropic or llama_cpp backend, online or batch mode): answer A/B = base/tuned, then tuned/base. The
judge sees the question, its source chunk (video title and timestamp range), the reference answer and
the two answers; it replies which answer is better (A, B or tie) with a one-sentence reason, and per
answer its faithfulness to the chunk (yes / partly / no) and how much it sounds like the channel
(style 1-5).

A model wins a question only when both orders prefer it; any other combination (a preference that
flipped with the order, a tie in either order) is a tie. Per answer, faithfulness is the worse of the
two orders and style their mean. ``judge.json`` sums the rows up with bootstrap 95% intervals over the
questions (:mod:`tubetune.evaluate.bootstrap`).

Offline default: before any call every request is resolved through the cache. When some have no reply,
the backend is anthropic and ANTHROPIC_API_KEY is not set, the judge ends "not_run" with the reason and
the rule succeeds. A question whose requests fail for good (backend error, output still invalid after
the re-asks) or whose chunk is missing is an "error" row, left out of ``n`` and counted in ``errors``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tubetune.errors import InputFileError, TubetuneError, one_line
from tubetune.evaluate.bootstrap import Interval, mean_interval, paired_delta_interval
from tubetune.generate.chunk import Chunk
from tubetune.generate.prompts import PromptTemplate, chunk_request, load_prompt
from tubetune.generate.questions import load_chunks
from tubetune.jsonio import read_jsonl, write_json, write_jsonl
from tubetune.llm.backends import ANTHROPIC_KEY_ENV
from tubetune.llm.batch import BatchResultBackend, PlannedRequest, run_batch_pass
from tubetune.llm.client import LLMClient, LLMResult
from tubetune.llm.ledger import UsageRecord, build_ledger
from tubetune.llm.request import LLMRequest
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

logger = logging.getLogger(__name__)

PASS_NAME = "judge"
MODELS = ("base", "tuned")
# The two orders the answers are shown in: (order name, (model shown as A, model shown as B)).
ORDERS: tuple[tuple[str, tuple[str, str]], ...] = (
    ("base_first", ("base", "tuned")),
    ("tuned_first", ("tuned", "base")),
)
LETTERS = ("A", "B")
FAITHFUL = ("yes", "partly", "no")  # best first
# A faithfulness rating as a number: the faithfulness score is its mean over the questions.
FAITHFUL_SCORE = {"yes": 1.0, "partly": 0.5, "no": 0.0}
STYLES = (1, 2, 3, 4, 5)
EMPTY_ANSWER = "(empty answer)"
PLACEHOLDERS = ("title", "start", "end", "chunk", "question", "reference", "answer_a", "answer_b")
DIGITS = 4

# Enums rather than minimum/maximum: Anthropic structured outputs enforce enums, not numeric bounds.
RATING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "faithful": {"enum": list(FAITHFUL)},
        "style": {"enum": list(STYLES)},
    },
    "required": ["faithful", "style"],
    "additionalProperties": False,
}
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer_a": RATING_SCHEMA,
        "answer_b": RATING_SCHEMA,
        "reason": {"type": "string"},
        "better": {"enum": [*LETTERS, "tie"]},
    },
    "required": ["answer_a", "answer_b", "reason", "better"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class JudgeSettings:
    """The config section ``judge`` (config.schema.yaml holds every key's default and bounds)."""

    enabled: bool
    model: str | None
    prompt: str
    max_tokens: int


@dataclass(frozen=True)
class JudgeQuestion:
    """One test question to judge: its index and text and one request per order of :data:`ORDERS`
    (none when the question cannot be judged; ``error`` says why)."""

    index: int
    question: str
    requests: tuple[LLMRequest, ...] = ()
    error: str | None = None


# ------------------------------------------------------------------------------------------- requests


def judge_llm_settings(llm_config: Mapping[str, Any], settings: JudgeSettings) -> LLMSettings:
    """The judge's LLM settings: the ``llm`` section with ``judge.model`` (when set) as the model and
    ``judge.max_tokens`` as the output limit (same backend, cache and delivery settings)."""
    llm = settings_from(LLMSettings, llm_config, "llm")
    return dataclasses.replace(llm, model=settings.model or llm.model, max_tokens=settings.max_tokens)


def _answer_text(row: Mapping[str, Any], model: str, where: str) -> str:
    entry = row.get(model)
    text = entry.get("answer") if isinstance(entry, Mapping) else None
    if not isinstance(text, str):
        raise InputFileError(f"{where}: no {model}.answer (a string) in the answer row")
    return text.strip() or EMPTY_ANSWER


def judge_request(
    chunk: Chunk, row: Mapping[str, Any], shown: tuple[str, str], prompt: PromptTemplate, llm: LLMSettings
) -> LLMRequest:
    """The request judging one answer row with the answer of ``shown[0]`` as A and ``shown[1]`` as B."""
    where = f"answer row {row.get('index')}"
    return chunk_request(
        chunk,
        prompt,
        llm,
        JUDGE_SCHEMA,
        question=str(row["question"]),
        reference=str(row["reference"]),
        answer_a=_answer_text(row, shown[0], where),
        answer_b=_answer_text(row, shown[1], where),
    )


def judge_plan(
    rows: Sequence[Mapping[str, Any]],
    chunks: Mapping[str, Chunk],
    prompt: PromptTemplate,
    llm: LLMSettings,
) -> list[JudgeQuestion]:
    """Every judge request of ``rows`` (answers.jsonl rows), two per question in the order of
    :data:`ORDERS`; a row whose source chunk (``meta.chunk_id``) is not in ``chunks`` gets the reason."""
    plan: list[JudgeQuestion] = []
    for position, row in enumerate(rows):
        for key in ("question", "reference"):
            if not isinstance(row.get(key), str):
                raise InputFileError(f"answer row {position + 1}: no {key} (a string)")
        index = int(row.get("index", position))
        meta = row.get("meta")
        chunk_id = meta.get("chunk_id") if isinstance(meta, Mapping) else None
        chunk = chunks.get(chunk_id) if isinstance(chunk_id, str) else None
        if chunk is None:
            reason = (
                "the answer row has no meta.chunk_id"
                if chunk_id is None
                else f"source chunk {chunk_id!r} is not in the chunk files"
            )
            plan.append(JudgeQuestion(index, row["question"], error=reason))
            continue
        requests = tuple(judge_request(chunk, row, shown, prompt, llm) for _, shown in ORDERS)
        plan.append(JudgeQuestion(index, row["question"], requests))
    return plan


def judge_requests(
    answers_path: str | Path,
    chunk_paths: Sequence[str | Path],
    prompt_path: str | Path,
    llm_config: Mapping[str, Any],
    judge_config: Mapping[str, Any],
) -> list[LLMRequest]:
    """Every judge request the rule sends for ``answers_path`` (two per question, in file order), as
    the rule builds them: how the sample's reference replies are written under the right keys."""
    settings = settings_from(JudgeSettings, judge_config, "judge")
    llm = judge_llm_settings(llm_config, settings)
    prompt = load_prompt(prompt_path, PLACEHOLDERS)
    chunks = {chunk.chunk_id: chunk for chunk in load_chunks(*chunk_paths)}
    plan = judge_plan(read_jsonl(answers_path), chunks, prompt, llm)
    return [request for question in plan for request in question.requests]


def check_reply(data: Any) -> None:
    """The check beyond the schema: the verdict comes with a reason."""
    if not str(data["reason"]).strip():
        raise ValueError("the reason is empty: give the reason for the verdict in one sentence")


# ------------------------------------------------------------------------------------------- outcomes


def order_verdict(
    order: str, shown: tuple[str, str], data: Mapping[str, Any], request_key: str
) -> dict[str, Any]:
    """One order's reply with A and B mapped back to the models."""
    better = data["better"]
    return {
        "order": order,
        "preferred": "tie" if better == "tie" else shown[LETTERS.index(better)],
        "reason": one_line(data["reason"]),
        "request_key": request_key,
        "ratings": {
            model: {"faithful": data[f"answer_{letter.lower()}"]["faithful"],
                    "style": int(data[f"answer_{letter.lower()}"]["style"])}
            for model, letter in zip(shown, LETTERS, strict=True)
        },
    }


def combine(index: int, question: str, verdicts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The judge.jsonl row of a question judged in both orders.

    A model wins only when every order prefers it; "flipped": one order preferred base, the other tuned.
    """
    preferred = [verdict["preferred"] for verdict in verdicts]
    winner = preferred[0] if preferred[0] != "tie" and len(set(preferred)) == 1 else "tie"
    return {
        "index": index,
        "question": question,
        "outcome": winner,
        "flipped": set(preferred) == set(MODELS),
        "orders": list(verdicts),
        "faithfulness": {
            model: max((v["ratings"][model]["faithful"] for v in verdicts), key=FAITHFUL.index)
            for model in MODELS
        },
        "style": {
            model: sum(v["ratings"][model]["style"] for v in verdicts) / len(verdicts) for model in MODELS
        },
        "error": None,
    }


def error_row(
    index: int, question: str, reason: str, verdicts: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The judge.jsonl row of a question without a verdict (the orders that were answered, the reason)."""
    return {
        "index": index,
        "question": question,
        "outcome": "error",
        "flipped": False,
        "orders": list(verdicts),
        "faithfulness": None,
        "style": None,
        "error": one_line(reason),
    }


def question_row(
    question: JudgeQuestion, outcomes: Sequence[LLMResult | TubetuneError]
) -> dict[str, Any]:
    """The judge.jsonl row of ``question`` from the outcome of each of its requests."""
    if question.error is not None:
        return error_row(question.index, question.question, question.error)
    verdicts: list[dict[str, Any]] = []
    failures: list[str] = []
    for (order, shown), request, outcome in zip(ORDERS, question.requests, outcomes, strict=True):
        if isinstance(outcome, LLMResult):
            verdicts.append(order_verdict(order, shown, outcome.data, request.key()))
        else:
            failures.append(f"{order}: {outcome}")
    if failures:
        reason = "judge request failed: " + "; ".join(failures)
        return error_row(question.index, question.question, reason, verdicts)
    return combine(question.index, question.question, verdicts)


# ------------------------------------------------------------------------------------------- summary


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, DIGITS)


def _interval(interval: Interval | None) -> list[float] | None:
    return None if interval is None else [round(value, DIGITS) for value in interval.to_json()]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


WIN_SCORE = {"tuned": 1.0, "tie": 0.5, "base": 0.0}


def summarize(rows: Sequence[Mapping[str, Any]], *, n_resamples: int, seed: int) -> dict[str, Any]:
    """The counts and rates of judge.json over the rows with a verdict, with bootstrap 95% intervals
    over questions: ``tuned_win_rate`` = (tuned wins + ties / 2) / n, the style delta and the
    faithful delta (faithfulness score: yes 1, partly 0.5, no 0, tuned - base), both paired."""
    judged = [row for row in rows if row["outcome"] != "error"]
    outcomes = Counter(row["outcome"] for row in judged)
    boot = {"n_resamples": n_resamples, "seed": seed}
    scores = [WIN_SCORE[row["outcome"]] for row in judged]
    faithful = {m: [FAITHFUL_SCORE[row["faithfulness"][m]] for row in judged] for m in MODELS}
    style = {m: [float(row["style"][m]) for row in judged] for m in MODELS}
    faithfulness: dict[str, Any] = {}
    for model in MODELS:
        levels = Counter(row["faithfulness"][model] for row in judged)
        faithfulness[model] = {**{level: levels[level] for level in FAITHFUL},
                               "yes_rate": _rounded(levels["yes"] / len(judged)) if judged else None,
                               "score": _rounded(_mean(faithful[model]))}
    style_means = {m: _mean(style[m]) for m in MODELS}
    faithful_scores = {m: _mean(faithful[m]) for m in MODELS}

    def delta(values: Mapping[str, float | None]) -> float | None:
        base, tuned = values["base"], values["tuned"]
        return None if base is None or tuned is None else _rounded(tuned - base)

    return {
        "n": len(judged),
        "errors": len(rows) - len(judged),
        "tuned_wins": outcomes["tuned"],
        "base_wins": outcomes["base"],
        "ties": outcomes["tie"],
        "tuned_win_rate": _rounded(_mean(scores)),
        "ci95": _interval(mean_interval(scores, **boot)),
        "flips": sum(1 for row in judged if row["flipped"]),
        "faithfulness": faithfulness,
        "style": {
            **{m: {"mean": _rounded(style_means[m])} for m in MODELS},
            "delta": delta(style_means),
            "delta_ci95": _interval(paired_delta_interval(style["base"], style["tuned"], **boot)),
        },
        "faithful_delta": delta(faithful_scores),
        "faithful_delta_ci95": _interval(paired_delta_interval(faithful["base"], faithful["tuned"], **boot)),
    }


def usage_dollars(usage: Mapping[str, Any], prices: Mapping[str, Mapping[str, Any]]) -> float | None:
    """What a usage record cost, priced as the LLM ledger prices it (batch discount included);
    None when the model has no price in ``llm.prices`` and tokens were billed."""
    record = UsageRecord.parse(dict(usage), "judge usage record")
    dollars = build_ledger([record], prices)["total"]["dollars"]
    return None if dollars is None else float(dollars)


# ------------------------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class JudgeOutputs:
    """The judge rule's outputs, named as in rules/evaluate.smk."""

    rows: Path  # results/eval/judge.jsonl
    summary: Path  # results/eval/judge.json
    usage: Path  # results/llm/usage/judge.json


def _missing_requests(client: LLMClient, plan: Sequence[JudgeQuestion]) -> tuple[int, int]:
    """(requests whose re-ask chain lacks a cached reply, all requests), without any backend call."""
    requests = [request for question in plan for request in question.requests]
    missing = sum(1 for request in requests if client.resolve(request, check_reply).missing is not None)
    return missing, len(requests)


def not_run_reason(missing: int, total: int, llm: LLMSettings) -> str | None:
    """Why the judge cannot run offline: requests without a cached reply, the anthropic backend and
    no API key; None when it can run."""
    if missing == 0 or llm.backend != "anthropic" or os.environ.get(ANTHROPIC_KEY_ENV, "").strip():
        return None
    return (
        f"{missing} of {total} judge requests have no cached reply and {ANTHROPIC_KEY_ENV} is not set "
        "(set it to run the judge; answers generated on another machine can differ from the seed cache's)"
    )


def _write(
    outputs: JudgeOutputs,
    head: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Any],
    usage: Mapping[str, Any],
    prices: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    result = {**head, **summary, "usage": dict(usage), "dollars": usage_dollars(usage, prices)}
    write_jsonl(outputs.rows, rows)
    write_json(outputs.summary, result)
    write_json(outputs.usage, usage)
    return result


def _batch_client(
    llm: LLMSettings, plan: Sequence[JudgeQuestion], usage_path: Path
) -> tuple[LLMClient, dict[str, Any]]:
    """``llm.mode: batch`` (anthropic): the cache misses go out as Message Batches; the pass's report
    (the job's usage record) is written to ``usage_path`` and every reply is then read from the cache."""
    planned = [
        PlannedRequest(request, check_reply, f"question {question.index}/{order}")
        for question in plan
        for (order, _), request in zip(ORDERS, question.requests, strict=True)
    ]
    report = run_batch_pass(PASS_NAME, planned, LLMClient(llm))
    write_json(usage_path, report)
    return LLMClient(llm, backend=BatchResultBackend(usage_path)), report


def judge(
    answers_path: str | Path,
    chunk_paths: Sequence[str | Path],
    prompt_path: str | Path,
    outputs: JudgeOutputs,
    llm_config: Mapping[str, Any],
    judge_config: Mapping[str, Any],
    bootstrap_resamples: int,
    seed: int,
    client: LLMClient | None = None,
) -> dict[str, Any]:
    """Rule ``judge``: base vs tuned answers of ``answers_path`` judged in both orders -> judge.jsonl
    (one row per question), judge.json (the verdict with its intervals, usage and dollars) and the
    job's usage record (pass "judge"). Returns judge.json's content.

    ``bootstrap_resamples`` and ``seed``: the ``evaluate`` section's bootstrap settings.
    """
    started = time.monotonic()
    settings = settings_from(JudgeSettings, judge_config, "judge")
    llm = judge_llm_settings(llm_config, settings)
    head: dict[str, Any] = {"status": "not_run", "reason": None, "backend": llm.backend,
                            "model": llm.request_model, "prompt_hash": None}
    if not settings.enabled:
        logger.info("judge.enabled is false: no judge request")
        usage = LLMClient(llm).usage_record(PASS_NAME, PASS_NAME, time.monotonic() - started)
        return _write(outputs, {**head, "reason": "judge.enabled is false"}, [], {}, usage, llm.prices)
    prompt = load_prompt(prompt_path, PLACEHOLDERS)
    head["prompt_hash"] = prompt.hash
    chunks = {chunk.chunk_id: chunk for chunk in load_chunks(*chunk_paths)}
    plan = judge_plan(read_jsonl(answers_path), chunks, prompt, llm)
    client = client or LLMClient(llm)
    reason = not_run_reason(*_missing_requests(client, plan), llm)
    if reason is not None:
        logger.warning("judge not run: %s", reason)
        usage = client.usage_record(PASS_NAME, PASS_NAME, time.monotonic() - started)
        return _write(outputs, {**head, "reason": reason}, [], {}, usage, llm.prices)
    batch_report: dict[str, Any] | None = None
    if llm.batch:
        client, batch_report = _batch_client(llm, plan, Path(outputs.usage))
    rows = _judge_rows(client, plan)
    summary = summarize(rows, n_resamples=bootstrap_resamples, seed=seed)
    client.log_summary()
    usage = batch_report or client.usage_record(PASS_NAME, PASS_NAME, time.monotonic() - started)
    result = _write(outputs, {**head, "status": "ok"}, rows, summary, usage, llm.prices)
    logger.info(
        "judge %s: n %d (%d errors): tuned %d, base %d, ties %d (%d flips); tuned win rate %s, ci95 %s",
        llm.request_model, summary["n"], summary["errors"], summary["tuned_wins"], summary["base_wins"],
        summary["ties"], summary["flips"], summary["tuned_win_rate"], summary["ci95"],
    )
    return result


def _judge_rows(client: LLMClient, plan: Sequence[JudgeQuestion]) -> list[dict[str, Any]]:
    """Every question's judge.jsonl row, its requests sent up to ``llm.concurrency`` at a time."""
    items = [(request, check_reply) for question in plan for request in question.requests]
    outcomes = client.complete_all(items, "judge", "request")
    rows: list[dict[str, Any]] = []
    position = 0
    for question in plan:
        count = len(question.requests)
        row = question_row(question, outcomes[position : position + count])
        position += count
        if row["error"]:
            logger.warning("question %d: no verdict (%s)", question.index, row["error"])
        rows.append(row)
    return rows


__all__ = [
    "JUDGE_SCHEMA",
    "JudgeOutputs",
    "JudgeQuestion",
    "JudgeSettings",
    "combine",
    "judge",
    "judge_llm_settings",
    "judge_plan",
    "judge_request",
    "judge_requests",
    "summarize",
]
