"""Rule answer_test: base and tuned answer the test split -> answers.jsonl and scores.json.

The heavy half of the evaluation: greedy answers of both GGUF exports through llama.cpp, the masked
test loss of both model dirs through MLX, and every answer scored against its reference. scores.json
holds each model's metrics and the per-question values the evaluate rule resamples for its intervals
(:mod:`tubetune.evaluate.deltas`). The MLX and llama.cpp modules are imported when
:func:`answer_test` runs, so the rest can be used without loading either.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tubetune.chat import chat_messages
from tubetune.errors import InputFileError
from tubetune.evaluate.metrics import (
    AnswerScores,
    aggregate_answers,
    chrf_statistics,
    clean,
    compile_patterns,
    reference_lengths,
    score_answer,
    word_count,
)
from tubetune.evaluate.settings import AnswerSettings, evaluate_settings
from tubetune.jsonio import read_jsonl, write_json, write_jsonl

if TYPE_CHECKING:
    from tubetune.evaluate.generate import GenerationRun, GenerationSettings
    from tubetune.train.loss import LossResult

logger = logging.getLogger(__name__)

MODELS = ("base", "tuned")
LOGGED_METRICS = ("test_loss", "rouge_l", "chrf", "format_compliance", "refusal_rate")


@dataclass(frozen=True)
class AnswerInputs:
    """The answer_test rule's inputs, named as in rules/evaluate.smk."""

    test: Path  # the test split (mlx-lm chat JSONL)
    base_gguf: Path
    tuned_gguf: Path
    base_model: Path  # MLX model dirs: the test loss
    tuned_model: Path


@dataclass(frozen=True)
class AnswerOutputs:
    """The answer_test rule's outputs, named as in rules/evaluate.smk."""

    answers: Path  # one row per test question: both answers with their scores
    scores: Path  # metrics, per-question values for the intervals, timing, models, settings


@dataclass(frozen=True)
class TestExample:
    """One test conversation: the prompt messages (system, user...) and the reference answer."""

    index: int
    prompt: list[dict[str, str]]
    question: str
    reference: str
    meta: dict[str, Any] = field(default_factory=dict)

    __test__ = False  # not a pytest class

    @property
    def messages(self) -> list[dict[str, str]]:
        return [*self.prompt, {"role": "assistant", "content": self.reference}]


def _example(row: Mapping[str, Any], index: int, where: str) -> TestExample:
    messages = chat_messages(row, where)
    users = [m["content"] for m in messages[:-1] if m["role"] == "user"]
    if not users:
        raise InputFileError(f"{where}: no user message (the question)")
    meta = row.get("meta")
    return TestExample(
        index=index,
        prompt=[{"role": m["role"], "content": m["content"]} for m in messages[:-1]],
        question=users[-1],
        reference=messages[-1]["content"],
        meta=dict(meta) if isinstance(meta, Mapping) else {},
    )


def read_test_set(path: Path, max_examples: int | None = None) -> list[TestExample]:
    """The test conversations of ``path`` (mlx-lm chat JSONL), at most ``max_examples``."""
    rows = read_jsonl(path)
    if not rows:
        raise InputFileError(f"{path}: the test split is empty (the dataset step put no video in it)")
    if max_examples is not None:
        rows = rows[:max_examples]
    return [_example(row, i, f"{path}:{i + 1}") for i, row in enumerate(rows)]


def count_videos(examples: Sequence[TestExample]) -> int | None:
    """How many videos the examples come from (``meta.video_id``); None when no example names one."""
    videos = {str(e.meta["video_id"]) for e in examples if e.meta.get("video_id")}
    return len(videos) or None


def _answer_rows(
    examples: Sequence[TestExample],
    runs: Mapping[str, GenerationRun],
    scores: Mapping[str, Sequence[AnswerScores]],
    losses: Mapping[str, LossResult],
) -> list[dict[str, Any]]:
    """One row per test example: question, reference, and each model's answer with its scores."""
    rows: list[dict[str, Any]] = []
    for i, example in enumerate(examples):
        row: dict[str, Any] = {
            "index": example.index,
            "question": example.question,
            "reference": example.reference,
            "meta": example.meta,
        }
        for name in MODELS:
            example_loss = losses[name].examples[i]
            row[name] = {
                **runs[name].answers[i].to_json(),
                **scores[name][i].to_json(),
                "loss": example_loss.loss,
                "loss_tokens": example_loss.n_tokens,
            }
        rows.append(clean(row))
    return rows


def per_question(
    examples: Sequence[TestExample],
    texts: Mapping[str, Sequence[str]],
    scores: Mapping[str, Sequence[AnswerScores]],
    losses: Mapping[str, LossResult],
) -> dict[str, Any]:
    """The per-question values behind each metric, in test order: what the intervals resample.

    Per model: ROUGE-L, chrF statistics (summed, they give corpus chrF), loss and scored tokens
    (token-weighted, they give the test loss), the format / cut / leak / refusal flags and the answer
    lengths. Also the reference lengths (the "closer to the reference" metrics).
    """
    references = [e.reference for e in examples]
    values: dict[str, Any] = {
        "reference_chars": [len(r) for r in references],
        "reference_words": [word_count(r) for r in references],
    }
    for name in MODELS:
        model_scores = scores[name]
        values[name] = {
            "rouge_l": [s.rouge_l for s in model_scores],
            "chrf_statistics": chrf_statistics(texts[name], references),
            "loss": [e.loss for e in losses[name].examples],
            "loss_tokens": [e.n_tokens for e in losses[name].examples],
            "format_ok": [s.format.ok for s in model_scores],
            "cut_at_max": [s.format.cut_at_max for s in model_scores],
            "leak": [bool(s.format.leaked) for s in model_scores],
            "refusal": [s.refusal for s in model_scores],
            "chars": [s.chars for s in model_scores],
            "words": [s.words for s in model_scores],
        }
    cleaned: dict[str, Any] = clean(values)
    return cleaned


def _timing(runs: Mapping[str, GenerationRun], losses: Mapping[str, LossResult]) -> dict[str, Any]:
    return {
        name: {
            "generation_tokens_per_s": runs[name].tokens_per_s,
            "generation_seconds": runs[name].seconds,
            "completion_tokens": runs[name].completion_tokens,
            "gguf_load_seconds": runs[name].load_seconds,
            "loss_seconds": losses[name].seconds,
            "loss_tokens_per_s": losses[name].tokens_per_s,
            "threads_used": runs[name].threads_used,
        }
        for name in MODELS
    }


def generation_settings(settings: AnswerSettings, threads: int) -> GenerationSettings:
    """llama.cpp answering settings: the generation keys of ``settings`` and the job's threads."""
    from tubetune.evaluate.generate import GenerationSettings

    return GenerationSettings(
        max_new_tokens=settings.max_new_tokens, seed=settings.seed, n_ctx=settings.n_ctx,
        repeat_penalty=settings.repeat_penalty, n_threads=max(1, threads),
    )


def run_models(
    inputs: AnswerInputs,
    examples: Sequence[TestExample],
    settings: AnswerSettings,
    generation: GenerationSettings,
) -> tuple[dict[str, GenerationRun], dict[str, LossResult]]:
    """Both models' greedy answers (llama.cpp on the GGUFs), then their test losses (MLX on the dirs)."""
    from tubetune.evaluate.generate import generate_answers
    from tubetune.train.loss import model_test_loss

    ggufs = {"base": inputs.base_gguf, "tuned": inputs.tuned_gguf}
    model_dirs = {"base": inputs.base_model, "tuned": inputs.tuned_model}
    prompts = [e.prompt for e in examples]
    runs = {
        name: generate_answers(ggufs[name], prompts, generation, label=f"{name} answers") for name in MODELS
    }
    rows = [{"messages": e.messages} for e in examples]
    losses = {
        name: model_test_loss(model_dirs[name], rows, batch_size=settings.loss_batch_size,
                              max_seq_length=settings.loss_max_seq_length, label=f"{name} loss")
        for name in MODELS
    }
    return runs, losses


def score_model(
    run: GenerationRun,
    loss: LossResult,
    examples: Sequence[TestExample],
    settings: AnswerSettings,
    refusal_patterns: Sequence[re.Pattern[str]],
) -> tuple[list[AnswerScores], dict[str, float]]:
    """Each answer's scores, and the model's metrics (test loss, perplexity, answer aggregates)."""
    scores = [
        score_answer(
            answer.text, example.reference, finish_reason=answer.finish_reason,
            completion_tokens=answer.completion_tokens, max_tokens=settings.max_new_tokens,
            refusal_patterns=refusal_patterns, markers=settings.leak_markers, error=answer.error,
        )
        for answer, example in zip(run.answers, examples, strict=True)
    ]
    metrics = {
        "test_loss": loss.loss,
        "test_perplexity": loss.perplexity,
        **aggregate_answers([a.text for a in run.answers], [e.reference for e in examples], scores),
    }
    return scores, metrics


def scores_document(
    inputs: AnswerInputs,
    settings: AnswerSettings,
    examples: Sequence[TestExample],
    per_model: Mapping[str, Mapping[str, float]],
    values: Mapping[str, Any],
    *,
    losses: Mapping[str, LossResult],
    timing: Mapping[str, Any],
    blas: str,
) -> dict[str, Any]:
    """scores.json: each model's metrics, the per-question values behind them, and what produced them."""
    document: dict[str, Any] = clean({
        "n_examples": len(examples),
        "n_test_videos": count_videos(examples),
        "gguf_quant": settings.quant,
        "max_new_tokens": settings.max_new_tokens,
        "metrics": {name: dict(per_model[name]) for name in MODELS},
        "reference": reference_lengths([e.reference for e in examples]),
        "per_question": dict(values),
        "loss_tokens": {name: losses[name].n_tokens for name in MODELS},
        "timing": dict(timing),
        "models": {
            "base_gguf": str(inputs.base_gguf), "tuned_gguf": str(inputs.tuned_gguf),
            "base_model": str(inputs.base_model), "tuned_model": str(inputs.tuned_model),
        },
        "blas": blas,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
    })
    return document


def answer_test(
    inputs: AnswerInputs, outputs: AnswerOutputs, settings: Mapping[str, Any], *, threads: int
) -> dict[str, Any]:
    """Rule answer_test: base and tuned answer the test split -> answers.jsonl and scores.json.

    ``settings``: the answer_test keys of the ``evaluate:`` section (:class:`AnswerSettings`).
    ``quant`` only labels the results: the rule picks the GGUF files of that quantization. Returns
    the scores document.
    """
    from tubetune.mlxrt import BLAS

    started = time.perf_counter()
    logger.info("BLAS for MLX: %s", BLAS)
    values = evaluate_settings(AnswerSettings, settings)
    refusal_patterns = compile_patterns(values.refusal_patterns)
    examples = read_test_set(inputs.test, values.max_examples)
    logger.info("answering %d test questions from %s (%s videos)", len(examples), inputs.test,
                count_videos(examples) or "unknown")

    generation = generation_settings(values, threads)
    runs, losses = run_models(inputs, examples, values, generation)
    scored = {
        name: score_model(runs[name], losses[name], examples, values, refusal_patterns) for name in MODELS
    }
    scores = {name: scored[name][0] for name in MODELS}
    texts = {name: [a.text for a in runs[name].answers] for name in MODELS}
    timing = {**_timing(runs, losses), "threads": generation.n_threads,
              "total_seconds": time.perf_counter() - started}
    document = scores_document(
        inputs, values, examples, {name: scored[name][1] for name in MODELS},
        per_question(examples, texts, scores, losses), losses=losses, timing=timing, blas=BLAS,
    )
    write_jsonl(outputs.answers, _answer_rows(examples, runs, scores, losses))
    write_json(outputs.scores, document)
    for name in LOGGED_METRICS:
        logger.info("%s: base %s, tuned %s", name, document["metrics"]["base"][name],
                    document["metrics"]["tuned"][name])
    logger.info("wrote %s, %s in %.1f s", outputs.answers, outputs.scores, timing["total_seconds"])
    return document


__all__ = [
    "AnswerInputs",
    "AnswerOutputs",
    "TestExample",
    "answer_test",
    "count_videos",
    "generation_settings",
    "per_question",
    "read_test_set",
]
