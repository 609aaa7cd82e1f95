"""Rule evaluate: base vs tuned on the test split -> metrics.json, answers.jsonl, report.html.

The MLX and llama.cpp modules are imported when :func:`evaluate` runs, so the metric functions can be
used without loading either.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tubetune.chat import chat_messages
from tubetune.errors import InputFileError
from tubetune.evaluate.metrics import (
    METRICS,
    AnswerScores,
    aggregate_answers,
    compile_patterns,
    reference_lengths,
    score_answer,
    which_is_better,
)
from tubetune.jsonio import read_json, read_jsonl, write_json, write_jsonl
from tubetune.llm.spend import ledger_cost
from tubetune.settings import settings_from

if TYPE_CHECKING:
    from tubetune.evaluate.generate import GenerationRun, GenerationSettings
    from tubetune.train.loss import LossResult

logger = logging.getLogger(__name__)

MODELS = ("base", "tuned")
LOGGED_METRICS = ("test_loss", "rouge_l", "chrf", "format_compliance", "refusal_rate")


@dataclass(frozen=True)
class EvalSettings:
    """The ``evaluate:`` section of config.yaml (defaults and bounds: config.schema.yaml)."""

    quant: str
    max_new_tokens: int
    seed: int
    repeat_penalty: float
    n_ctx: int
    max_examples: int | None
    loss_batch_size: int
    loss_max_seq_length: int
    n_side_by_side: int
    refusal_patterns: tuple[str, ...]
    leak_markers: tuple[str, ...]


@dataclass(frozen=True)
class EvalInputs:
    """The evaluate rule's inputs, named as in rules/evaluate.smk."""

    test: Path  # the test split (mlx-lm chat JSONL)
    stats: Path  # the dataset's stats.json
    base_gguf: Path
    tuned_gguf: Path
    base_model: Path  # MLX model dirs: the test loss
    tuned_model: Path
    loss_png: Path  # the winning run's loss curve, embedded in the report
    summary: Path  # the winning run's summary.json
    ledger: Path  # the LLM ledger.json behind the dataset: metrics llm_cost, report line


@dataclass(frozen=True)
class EvalOutputs:
    """The evaluate rule's outputs, named as in rules/evaluate.smk."""

    metrics: Path
    report: Path
    answers: Path


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


def _clean(value: Any) -> Any:
    """NaN and infinity become null (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def build_metrics(
    per_model: Mapping[str, Mapping[str, float]], reference: Mapping[str, float]
) -> dict[str, Any]:
    """``base``, ``tuned``, ``delta`` (tuned - base) and ``better`` for every metric."""
    names = [info.name for info in METRICS if info.name in per_model["base"]]
    base = {name: float(per_model["base"][name]) for name in names}
    tuned = {name: float(per_model["tuned"][name]) for name in names}
    return {
        "base": base,
        "tuned": tuned,
        "delta": {name: tuned[name] - base[name] for name in names},
        "better": {
            name: which_is_better(name, base[name], tuned[name], reference.get(name)) for name in names
        },
        "reference": dict(reference),
        "metric_info": {
            info.name: {"label": info.label, "better": info.better.value, "description": info.description}
            for info in METRICS if info.name in names
        },
    }


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
        rows.append(_clean(row))
    return rows


def _timing(runs: Mapping[str, GenerationRun], losses: Mapping[str, LossResult]) -> dict[str, Any]:
    return {
        name: {
            "generation_tokens_per_s": runs[name].tokens_per_s,
            "generation_seconds": runs[name].seconds,
            "completion_tokens": runs[name].completion_tokens,
            "gguf_load_seconds": runs[name].load_seconds,
            "loss_seconds": losses[name].seconds,
            "loss_tokens_per_s": losses[name].tokens_per_s,
        }
        for name in MODELS
    }


def generation_settings(settings: EvalSettings, threads: int) -> GenerationSettings:
    """llama.cpp answering settings: the generation keys of ``settings`` and the job's threads."""
    from tubetune.evaluate.generate import GenerationSettings

    return GenerationSettings(
        max_new_tokens=settings.max_new_tokens, seed=settings.seed, n_ctx=settings.n_ctx,
        repeat_penalty=settings.repeat_penalty, n_threads=max(1, threads),
    )


def run_models(
    inputs: EvalInputs,
    examples: Sequence[TestExample],
    settings: EvalSettings,
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
    settings: EvalSettings,
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


def metrics_document(
    inputs: EvalInputs,
    settings: EvalSettings,
    per_model: Mapping[str, Mapping[str, float]],
    references: Sequence[str],
    *,
    losses: Mapping[str, LossResult],
    timing: Mapping[str, Any],
    blas: str,
    run: str | None,
    llm_cost: Mapping[str, Any],
) -> dict[str, Any]:
    """metrics.json: the metric table (``per_model``) and what produced it."""
    document: dict[str, Any] = _clean({
        "n_examples": len(references),
        "gguf_quant": settings.quant,
        "max_new_tokens": settings.max_new_tokens,
        **build_metrics(per_model, reference_lengths(references)),
        "loss_tokens": {name: losses[name].n_tokens for name in MODELS},
        "timing": dict(timing),
        "models": {
            "base_gguf": str(inputs.base_gguf), "tuned_gguf": str(inputs.tuned_gguf),
            "base_model": str(inputs.base_model), "tuned_model": str(inputs.tuned_model),
        },
        "blas": blas,
        **({"train_run": run} if run else {}),
        "llm_cost": dict(llm_cost),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
    })
    return document


def evaluate(
    inputs: EvalInputs, outputs: EvalOutputs, settings: Mapping[str, Any], *, threads: int, run: str | None
) -> dict[str, Any]:
    """Rule evaluate: base vs tuned on the test split -> metrics.json, answers.jsonl, report.html.

    ``settings``: the ``evaluate:`` section; ``run``: the training run whose fused adapter is the
    tuned model (the winner of the sweep). ``quant`` only labels the results: the rule picks the GGUF
    files of that quantization. Returns the metrics.
    """
    from tubetune.mlxrt import BLAS

    from tubetune.evaluate.report import render_report, select_side_by_side, write_report

    started = time.perf_counter()
    logger.info("BLAS for MLX: %s", BLAS)
    values = settings_from(EvalSettings, settings, "evaluate")
    refusal_patterns = compile_patterns(values.refusal_patterns)
    examples = read_test_set(inputs.test, values.max_examples)
    train_summary = read_json(inputs.summary)
    dataset_stats = read_json(inputs.stats)
    llm_cost = ledger_cost(inputs.ledger)
    logger.info("evaluating %d test examples from %s", len(examples), inputs.test)

    generation = generation_settings(values, threads)
    runs, losses = run_models(inputs, examples, values, generation)
    scored = {
        name: score_model(runs[name], losses[name], examples, values, refusal_patterns) for name in MODELS
    }
    scores = {name: scored[name][0] for name in MODELS}
    timing = {**_timing(runs, losses), "threads": generation.n_threads,
              "total_seconds": time.perf_counter() - started}
    metrics = metrics_document(inputs, values, {name: scored[name][1] for name in MODELS},
                               [e.reference for e in examples], losses=losses, timing=timing, blas=BLAS,
                               run=run, llm_cost=llm_cost)
    answer_rows = _answer_rows(examples, runs, scores, losses)
    side_by_side = select_side_by_side([e.question for e in examples], values.n_side_by_side)
    html = render_report(metrics, answer_rows, side_by_side, loss_png=inputs.loss_png,
                         train_summary=train_summary, dataset_stats=dataset_stats, run=run, llm_cost=llm_cost)
    write_jsonl(outputs.answers, answer_rows)
    write_json(outputs.metrics, metrics)
    write_report(outputs.report, html)
    for name in LOGGED_METRICS:
        logger.info("%s: base %s, tuned %s (%s better)", name, metrics["base"][name],
                    metrics["tuned"][name], metrics["better"][name])
    logger.info("wrote %s, %s, %s in %.1f s", outputs.metrics, outputs.answers, outputs.report,
                metrics["timing"]["total_seconds"])
    return metrics


__all__ = [
    "EvalInputs",
    "EvalOutputs",
    "EvalSettings",
    "TestExample",
    "build_metrics",
    "evaluate",
    "generation_settings",
    "read_test_set",
]
