"""Rule evaluate: scores, judge and parity -> metrics.json with intervals, and report.html.

The cheap half of the evaluation (no model is loaded): it reads what answer_test, judge and parity
wrote, computes a paired bootstrap 95% interval for every base-vs-tuned delta
(:mod:`tubetune.evaluate.deltas`) and writes the metrics and the report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tubetune.errors import InputFileError
from tubetune.evaluate.bootstrap import CONFIDENCE
from tubetune.evaluate.deltas import build_metrics
from tubetune.evaluate.metrics import clean
from tubetune.evaluate.report import render_report, select_side_by_side, write_report
from tubetune.evaluate.settings import ReportSettings, evaluate_settings
from tubetune.evaluate.verdict import check_status
from tubetune.jsonio import read_json, read_jsonl, write_json
from tubetune.llm.spend import ledger_cost

logger = logging.getLogger(__name__)

LOGGED_METRICS = ("test_loss", "rouge_l", "chrf", "format_compliance", "refusal_rate")
SCORES_KEYS = ("n_examples", "gguf_quant", "max_new_tokens", "metrics", "reference", "per_question", "timing")


@dataclass(frozen=True)
class EvaluateInputs:
    """The evaluate rule's inputs, named as in rules/evaluate.smk."""

    scores: Path  # answer_test: metrics and per-question values
    answers: Path  # answer_test: both answers to every test question
    judge: Path  # judge.json: the verdict, or status not_run with the reason
    judge_rows: Path  # judge.jsonl: one row per question
    parity: Path  # parity.json: export parity, or status not_run
    loss_png: Path  # the winning run's loss curve, embedded in the report
    summary: Path  # the winning run's summary.json
    stats: Path  # the dataset's stats.json
    ledger: Path  # the LLM ledger.json behind the dataset: metrics llm_cost, report line


@dataclass(frozen=True)
class EvaluateOutputs:
    """The evaluate rule's outputs, named as in rules/evaluate.smk."""

    metrics: Path
    report: Path


def read_scores(path: Path) -> dict[str, Any]:
    """scores.json of answer_test, with the keys evaluate needs (one line naming a missing one)."""
    scores = read_json(path)
    if not isinstance(scores, Mapping):
        raise InputFileError(f"{path}: expected a JSON object (answer_test's scores)")
    missing = [key for key in SCORES_KEYS if key not in scores]
    if missing:
        raise InputFileError(f"{path}: no {missing[0]!r} (written by an older answer_test? rerun it)")
    return dict(scores)


def metrics_document(
    scores: Mapping[str, Any],
    settings: ReportSettings,
    *,
    judge: Mapping[str, Any],
    parity: Mapping[str, Any],
    run: str | None,
    llm_cost: Mapping[str, Any],
) -> dict[str, Any]:
    """metrics.json: the metric table with intervals, the judge and parity results, what produced them."""
    table = build_metrics(scores["metrics"], scores["reference"], scores["per_question"],
                          n_resamples=settings.bootstrap_resamples, seed=settings.seed)
    document: dict[str, Any] = clean({
        "n_examples": scores["n_examples"],
        "n_test_videos": scores.get("n_test_videos"),
        "gguf_quant": scores["gguf_quant"],
        "max_new_tokens": scores["max_new_tokens"],
        **table,
        "bootstrap": {"resamples": settings.bootstrap_resamples, "seed": settings.seed,
                      "confidence": CONFIDENCE, "method": "percentile, test questions resampled in pairs"},
        "judge": dict(judge),
        "parity": dict(parity),
        "loss_tokens": scores.get("loss_tokens"),
        "timing": dict(scores["timing"]),
        "models": scores.get("models", {}),
        "blas": scores.get("blas"),
        **({"train_run": run} if run else {}),
        "llm_cost": dict(llm_cost),
        "settings": {**(scores.get("settings") or {}), **asdict(settings)},
    })
    return document


def evaluate(
    inputs: EvaluateInputs, outputs: EvaluateOutputs, settings: Mapping[str, Any], *, run: str | None
) -> dict[str, Any]:
    """Rule evaluate: scores, judge and parity -> metrics.json (with ``delta_ci95``, ``significant``,
    ``judge``, ``parity``) and report.html.

    ``settings``: the evaluate keys of the ``evaluate:`` section (:class:`ReportSettings`); ``run``:
    the training run whose fused adapter is the tuned model (the winner of the sweep). Returns the
    metrics.
    """
    started = time.perf_counter()
    values = evaluate_settings(ReportSettings, settings)
    scores = read_scores(inputs.scores)
    answers = read_jsonl(inputs.answers)
    judge = check_status(read_json(inputs.judge), str(inputs.judge), ("ok", "not_run"))
    parity = check_status(read_json(inputs.parity), str(inputs.parity), ("ok", "drop", "not_run"))
    judge_rows = read_jsonl(inputs.judge_rows) if judge["status"] == "ok" else []
    llm_cost = ledger_cost(inputs.ledger)

    metrics = metrics_document(scores, values, judge=judge, parity=parity, run=run, llm_cost=llm_cost)
    side_by_side = select_side_by_side([str(row["question"]) for row in answers], values.n_side_by_side)
    html = render_report(metrics, answers, side_by_side, loss_png=inputs.loss_png,
                         train_summary=read_json(inputs.summary), dataset_stats=read_json(inputs.stats),
                         run=run, llm_cost=llm_cost, judge_rows=judge_rows)
    write_json(outputs.metrics, metrics)
    write_report(outputs.report, html)
    for name in LOGGED_METRICS:
        logger.info("%s: base %s, tuned %s, delta 95%% CI %s (%s)", name, metrics["base"][name],
                    metrics["tuned"][name], metrics["delta_ci95"][name], metrics["better"][name])
    if judge["status"] == "ok":
        logger.info("judge: tuned win rate %s, 95%% CI %s over %s questions", judge.get("tuned_win_rate"),
                    judge.get("ci95"), judge.get("n"))
    else:
        logger.info("judge not run: %s", judge.get("reason"))
    logger.info("parity: %s", parity["status"])
    logger.info("wrote %s, %s in %.1f s", outputs.metrics, outputs.report, time.perf_counter() - started)
    return metrics


__all__ = ["EvaluateInputs", "EvaluateOutputs", "evaluate", "metrics_document", "read_scores"]
