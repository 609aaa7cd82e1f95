"""mlx-lm training callback: metrics JSONL as they happen, best adapter by val loss, early stopping.

When :meth:`MetricsCallback.on_val_loss_report` runs, the model holds exactly the weights the
reported val loss was measured on: that is when the best adapter is saved. Training stops by raising
:class:`StopTraining` from the callback (between two steps, so no step is half done); the runner
catches it.

Validation schedule: mlx-lm's ``train()`` validates *before* the step of iteration ``it`` and reports
it as iteration ``it - 1``, so its ``steps_per_eval`` gives val losses at iterations 0, N-1, 2N-1, ...
The runner therefore lets mlx-lm validate only at the start (iteration 0) and after the last step,
and this callback validates after the train report of every iteration that is a multiple of
``steps_per_eval`` (val losses at 0, N, 2N, ..., iters).

Guards: a NaN or infinite train or val loss stops training at once with :class:`TrainingDiverged`
(a :class:`~tubetune.errors.TubetuneError`, so the rule fails with one line naming what to change;
the metrics rows written so far stay in ``metrics.jsonl``). A val loss that rises for
``rising_warn_after`` evaluations in a row is warned about once (overfitting).
"""

from __future__ import annotations

import tubetune.mlxrt  # noqa: F401  (the fast BLAS before mlx_lm loads mlx)

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlx_lm.tuner.callbacks import TrainingCallback

from tubetune.errors import TubetuneError

logger = logging.getLogger(__name__)

METRIC_FIELDS = (
    "kind",
    "iteration",
    "epoch",
    "train_loss",
    "val_loss",
    "learning_rate",
    "tokens_per_second",
    "peak_memory_gb",
    "trained_tokens",
    "val_time_s",
    "is_best",
)


class StopTraining(Exception):
    """Raised from the callback to end ``train()`` at a validation report."""

    def __init__(self, reason: str, iteration: int) -> None:
        super().__init__(f"{reason} at iteration {iteration}")
        self.reason = reason
        self.iteration = iteration


class TrainingDiverged(TubetuneError):
    """The train or val loss became NaN or infinite: training cannot recover, the run stops."""

    def __init__(self, message: str, iteration: int) -> None:
        super().__init__(message)
        self.iteration = iteration


def _describe(loss: float) -> str:
    return "NaN" if math.isnan(loss) else "infinite"


@dataclass
class EarlyStopping:
    """Tracks the best val loss and counts evaluations without improvement.

    ``best_*`` is the lowest val loss seen (the checkpoint kept). Patience counts evaluations
    that did not beat the loss of the last improvement by more than ``min_delta``.
    ``patience`` None disables stopping.
    """

    patience: int | None
    min_delta: float = 0.0
    best_loss: float = math.inf
    best_iteration: int | None = None
    evals_without_improvement: int = 0
    _reference_loss: float = field(default=math.inf, repr=False)

    def update(self, iteration: int, loss: float) -> bool:
        """Record one val loss; return True when it is a new best (the adapter to keep)."""
        is_best = loss < self.best_loss
        if is_best:
            self.best_loss = loss
            self.best_iteration = iteration
        if loss < self._reference_loss - self.min_delta:
            self._reference_loss = loss
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        return is_best

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evals_without_improvement >= self.patience


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass
class MetricsCallback(TrainingCallback):
    """Writes one JSONL row per train or val report and keeps the best adapter.

    Args:
        metrics_path: ``metrics.jsonl``; truncated at start, one row appended per report.
        batches_per_epoch: for the ``epoch`` column (iteration / batches_per_epoch).
        stopper: best-loss and patience bookkeeping.
        final_iteration: the val report of this iteration ends training (``StopTraining``).
        save_best: called with the iteration when the current weights are a new best.
        evaluate: returns the val loss of the current weights; called after the train report of
            every iteration that is a multiple of ``steps_per_eval`` (and before ``final_iteration``).
        on_eval: called with the iteration after every val report (e.g. keep all checkpoints).
        learning_rate: current learning rate (for val rows).
        peak_memory_gb: current peak memory (for val rows).
        base_learning_rate: ``train.learning_rate``, named in the message when the loss diverges
            (None: the current learning rate of the schedule is named).
        rising_warn_after: warn once when the val loss has risen this many evaluations in a row
            (0: never).
    """

    metrics_path: Path
    batches_per_epoch: int
    stopper: EarlyStopping
    final_iteration: int
    save_best: Callable[[int], None]
    evaluate: Callable[[], float] | None = None
    steps_per_eval: int = 0
    on_eval: Callable[[int], None] | None = None
    learning_rate: Callable[[], float] | None = None
    peak_memory_gb: Callable[[], float] | None = None
    progress: Any = None
    base_learning_rate: float | None = None
    rising_warn_after: int = 3
    rows: list[dict[str, Any]] = field(default_factory=list)
    train_tokens: float = 0.0
    train_seconds: float = 0.0
    _previous_trained_tokens: float = 0.0
    _rising_evals: int = 0
    _rising_from: float | None = None
    _warned_rising: bool = False

    def __post_init__(self) -> None:
        self.metrics_path = Path(self.metrics_path)
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self.metrics_path.write_text("", encoding="utf-8")

    def epoch(self, iteration: int) -> float:
        return round(iteration / max(1, self.batches_per_epoch), 4)

    def _append(self, row: dict[str, Any]) -> None:
        full = {name: row.get(name) for name in METRIC_FIELDS}
        self.rows.append(full)
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(full) + "\n")
            handle.flush()

    def on_train_loss_report(self, train_info: Mapping[str, Any]) -> None:
        iteration = int(train_info["iteration"])
        tokens_per_second = _finite(train_info.get("tokens_per_second"))
        trained = float(train_info.get("trained_tokens", 0.0))
        window_tokens = trained - self._previous_trained_tokens
        self._previous_trained_tokens = trained
        if tokens_per_second:
            self.train_tokens += window_tokens
            self.train_seconds += window_tokens / tokens_per_second
        row = {
            "kind": "train",
            "iteration": iteration,
            "epoch": self.epoch(iteration),
            "train_loss": _finite(train_info.get("train_loss")),
            "learning_rate": _finite(train_info.get("learning_rate")),
            "tokens_per_second": tokens_per_second,
            "peak_memory_gb": _finite(train_info.get("peak_memory")),
            "trained_tokens": int(trained),
        }
        self._append(row)
        logger.info(
            "iter %d (epoch %.2f): train loss %.4f, lr %.3g, %.0f tokens/s, peak memory %.2f GB",
            iteration, row["epoch"], row["train_loss"] or math.nan, row["learning_rate"] or math.nan,
            tokens_per_second or math.nan, row["peak_memory_gb"] or math.nan,
        )
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{row['train_loss'] or math.nan:.3f}", refresh=False)
        raw_loss = train_info.get("train_loss")
        if raw_loss is not None and not math.isfinite(float(raw_loss)):
            current = _finite(train_info.get("learning_rate"))
            raise self._diverged("train", float(raw_loss), iteration, current)
        due = self.steps_per_eval > 0 and iteration % self.steps_per_eval == 0
        if self.evaluate is not None and due and iteration < self.final_iteration:
            started = time.perf_counter()
            loss = self.evaluate()
            self.on_val_loss_report(
                {"iteration": iteration, "val_loss": loss, "val_time": time.perf_counter() - started}
            )

    def on_val_loss_report(self, val_info: Mapping[str, Any]) -> None:
        iteration = int(val_info["iteration"])
        loss = float(val_info["val_loss"])
        is_best = self.stopper.update(iteration, loss) if math.isfinite(loss) else False
        if is_best:
            self.save_best(iteration)
        row = {
            "kind": "val",
            "iteration": iteration,
            "epoch": self.epoch(iteration),
            "val_loss": _finite(loss),
            "learning_rate": _finite(self.learning_rate()) if self.learning_rate else None,
            "peak_memory_gb": _finite(self.peak_memory_gb()) if self.peak_memory_gb else None,
            "val_time_s": _finite(val_info.get("val_time")),
            "is_best": is_best,
        }
        self._append(row)
        if not math.isfinite(loss):
            current = _finite(self.learning_rate()) if self.learning_rate else None
            raise self._diverged("val", loss, iteration, current)
        self._watch_rising(iteration, loss)
        logger.info(
            "iter %d (epoch %.2f): val loss %.4f%s", iteration, row["epoch"], loss,
            " (best so far, adapter saved)" if is_best else
            f" (best {self.stopper.best_loss:.4f} at iter {self.stopper.best_iteration}, "
            f"{self.stopper.evals_without_improvement} evaluation(s) without improvement)",
        )
        if self.on_eval is not None:
            self.on_eval(iteration)
        if iteration >= self.final_iteration:
            raise StopTraining("completed", iteration)
        if self.stopper.should_stop:
            logger.info(
                "early stopping at iter %d: no val improvement in %d evaluations",
                iteration, self.stopper.evals_without_improvement,
            )
            raise StopTraining("early_stopped", iteration)

    def _diverged(self, kind: str, loss: float, iteration: int, current_lr: float | None) -> TrainingDiverged:
        """The one-line error for a NaN / infinite loss (the row is already in metrics.jsonl)."""
        what = f"{kind} loss is {_describe(loss)} at iteration {iteration}"
        if kind == "val" and iteration == 0:
            message = (
                f"{what}, before any training step: the validation data gives no loss; check "
                "results/dataset/valid.jsonl (examples whose answer is cut away by train.max_seq_length "
                "count no tokens) and the base model"
            )
        else:
            rate = self.base_learning_rate if self.base_learning_rate is not None else current_lr
            now = f" (now {rate:.3g})" if rate is not None else ""
            message = (
                f"{what}: training diverged; lower train.learning_rate{now}, e.g. by 10x, or raise "
                "train.warmup_ratio; float16 training can overflow: try train.dtype: float32"
            )
        return TrainingDiverged(message, iteration)

    def _watch_rising(self, iteration: int, loss: float) -> None:
        """Warn once when the val loss has risen ``rising_warn_after`` evaluations in a row."""
        previous = next(
            (row["val_loss"] for row in reversed(self.rows[:-1]) if row["kind"] == "val"), None
        )
        if previous is None or loss <= previous:
            self._rising_evals = 0
            self._rising_from = None
            return
        if self._rising_evals == 0:
            self._rising_from = previous
        self._rising_evals += 1
        due = self.rising_warn_after > 0 and self._rising_evals >= self.rising_warn_after
        if due and not self._warned_rising:
            self._warned_rising = True
            logger.warning(
                "val loss has risen %d evaluations in a row (%.4f -> %.4f at iteration %d): the model is "
                "overfitting; the best adapter (iteration %s, val loss %.4f) is kept; to stop sooner set "
                "train.early_stopping_patience, or train fewer train.epochs / train.iters",
                self._rising_evals, self._rising_from, loss, iteration, self.stopper.best_iteration,
                self.stopper.best_loss,
            )

    @property
    def mean_tokens_per_second(self) -> float | None:
        return self.train_tokens / self.train_seconds if self.train_seconds > 0 else None

    @property
    def final_train_loss(self) -> float | None:
        for row in reversed(self.rows):
            if row["kind"] == "train":
                value: float | None = row["train_loss"]
                return value
        return None
