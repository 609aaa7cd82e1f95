"""Step 12: evaluate the base and the tuned model on the test split and write the report.

* greedy answers of both GGUF exports through llama.cpp (:mod:`tubetune.evaluate.generate`),
* test loss / perplexity with the prompt masked, MLX on both model dirs (:mod:`tubetune.evaluate.loss`),
* ROUGE-L, chrF, format compliance, refusal rate, lengths (:mod:`tubetune.evaluate.metrics`),
* ``metrics.json``, ``answers.jsonl`` and a self-contained ``report.html`` (:mod:`tubetune.evaluate.report`).

The MLX and llama.cpp modules are imported when :func:`evaluate` runs, so the metric helpers can be
used without loading either.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tubetune.errors import ConfigError, InputFileError
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

if TYPE_CHECKING:
    from tubetune.evaluate.generate import GenerationRun
    from tubetune.evaluate.loss import LossResult

logger = logging.getLogger(__name__)

MODELS = ("base", "tuned")
DEFAULT_REFUSAL_PATTERNS = (
    r"\bI (can't|cannot|can not|don't know|do not know|am unable to|'m unable to|am not able to)\b",
    r"\b(as an|as a) (AI|language model)\b",
    r"\bI'm (sorry|afraid)\b",
    r"\bI apologi[sz]e\b",
)
DEFAULT_LEAK_MARKERS = (
    "<|im_start|>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|begin_of_text|>", "<|endoftext|>", "</s>", "<s>",
)


@dataclass(frozen=True)
class EvalSettings:
    """The ``evaluate:`` section of config.yaml (see config.schema.yaml for each key)."""

    quant: str = "q8_0"
    max_new_tokens: int = 256
    seed: int = 0
    repeat_penalty: float = 1.0
    n_ctx: int = 2048
    max_examples: int | None = None
    loss_batch_size: int = 4
    loss_max_seq_length: int = 2048
    n_side_by_side: int = 8
    refusal_patterns: tuple[str, ...] = DEFAULT_REFUSAL_PATTERNS
    leak_markers: tuple[str, ...] = DEFAULT_LEAK_MARKERS

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> EvalSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"config error: unknown key 'evaluate.{unknown[0]}' (known keys: {', '.join(sorted(known))})"
            )
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**kwargs)


@dataclass(frozen=True)
class EvalInputs:
    test: Path
    base_gguf: Path
    tuned_gguf: Path
    base_model: Path
    tuned_model: Path
    loss_png: Path
    train_summary: Path
    dataset_stats: Path
    llm_ledger: Path | None = None  # the LLM ledger.json behind the dataset: metrics llm_cost, report line


@dataclass(frozen=True)
class EvalOutputs:
    metrics: Path
    answers: Path
    report: Path


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
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise InputFileError(f"{where}: expected \"messages\" with at least a user and an assistant message")
    for message in messages:
        if not (isinstance(message, Mapping) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise InputFileError(f"{where}: every message needs a string \"role\" and \"content\"")
    if messages[-1]["role"] != "assistant":
        raise InputFileError(f"{where}: the last message must be the assistant's reference answer")
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


def evaluate(
    inputs: EvalInputs, outputs: EvalOutputs, settings: EvalSettings, threads: int = 1, run: str | None = None
) -> dict[str, Any]:
    """Run the whole evaluation; write metrics.json, answers.jsonl and report.html; return the metrics.

    ``run``: the training run whose fused adapter is the tuned model (the winner of the sweep).

    ``settings.quant`` only labels the results: the rule picks the GGUF files of that quantization.
    """
    from tubetune.mlxrt import BLAS

    from tubetune.evaluate import loss as loss_module
    from tubetune.evaluate.generate import GenerationSettings, generate_answers
    from tubetune.evaluate.report import render_report, select_side_by_side, write_report

    started = time.perf_counter()
    logger.info("BLAS for MLX: %s", BLAS)
    refusal_patterns = compile_patterns(settings.refusal_patterns)
    examples = read_test_set(inputs.test, settings.max_examples)
    train_summary = read_json(inputs.train_summary)
    dataset_stats = read_json(inputs.dataset_stats)
    llm_cost = ledger_cost(inputs.llm_ledger) if inputs.llm_ledger is not None else None
    logger.info("evaluating %d test examples from %s", len(examples), inputs.test)

    generation = GenerationSettings(
        max_new_tokens=settings.max_new_tokens, seed=settings.seed, n_ctx=settings.n_ctx,
        repeat_penalty=settings.repeat_penalty, n_threads=max(1, threads),
    )
    ggufs = {"base": inputs.base_gguf, "tuned": inputs.tuned_gguf}
    model_dirs = {"base": inputs.base_model, "tuned": inputs.tuned_model}
    references = [example.reference for example in examples]
    runs = {
        name: generate_answers(ggufs[name], [e.prompt for e in examples], generation, label=f"{name} answers")
        for name in MODELS
    }
    losses = {
        name: loss_module.model_test_loss(
            model_dirs[name], [{"messages": e.messages} for e in examples],
            batch_size=settings.loss_batch_size, max_seq_length=settings.loss_max_seq_length,
            label=f"{name} loss",
        )
        for name in MODELS
    }

    scores: dict[str, list[AnswerScores]] = {}
    per_model: dict[str, dict[str, float]] = {}
    for name in MODELS:
        answers = runs[name].answers
        scores[name] = [
            score_answer(
                answer.text, example.reference, finish_reason=answer.finish_reason,
                completion_tokens=answer.completion_tokens, max_tokens=settings.max_new_tokens,
                refusal_patterns=refusal_patterns, markers=settings.leak_markers, error=answer.error,
            )
            for answer, example in zip(answers, examples, strict=True)
        ]
        per_model[name] = {
            "test_loss": losses[name].loss,
            "test_perplexity": losses[name].perplexity,
            **aggregate_answers([a.text for a in answers], references, scores[name]),
        }

    answer_rows = _answer_rows(examples, runs, scores, losses)
    metrics: dict[str, Any] = _clean({
        "n_examples": len(examples),
        "gguf_quant": settings.quant,
        "max_new_tokens": settings.max_new_tokens,
        **build_metrics(per_model, reference_lengths(references)),
        "loss_tokens": {name: losses[name].n_tokens for name in MODELS},
        "timing": {
            **_timing(runs, losses),
            "threads": generation.n_threads,
            "total_seconds": time.perf_counter() - started,
        },
        "models": {
            "base_gguf": str(inputs.base_gguf), "tuned_gguf": str(inputs.tuned_gguf),
            "base_model": str(inputs.base_model), "tuned_model": str(inputs.tuned_model),
        },
        "blas": BLAS,
        **({"train_run": run} if run else {}),
        **({"llm_cost": llm_cost} if llm_cost is not None else {}),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
    })
    side_by_side = select_side_by_side([e.question for e in examples], settings.n_side_by_side)
    html = render_report(
        metrics, answer_rows, side_by_side,
        loss_png=inputs.loss_png, train_summary=train_summary, dataset_stats=dataset_stats, run=run,
        llm_cost=llm_cost,
    )
    write_jsonl(outputs.answers, answer_rows)
    write_json(outputs.metrics, metrics)
    write_report(outputs.report, html)
    for name in ("test_loss", "rouge_l", "chrf", "format_compliance", "refusal_rate"):
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
    "read_test_set",
]
