"""mlx-lm training callbacks: metrics writer, best adapter with early stopping, divergence guard, and
the chain that hands each report to them and validates on schedule.

Validation schedule: mlx-lm's ``train()`` validates *before* the step of iteration ``it`` and reports
it as iteration ``it - 1``, so its ``steps_per_eval`` would give val losses at 0, N-1, 2N-1, ... The
runner therefore gives mlx-lm no validation set: :class:`CallbackChain` validates after the train
report of every multiple of ``steps_per_eval`` before the last iteration, and the runner's batch
stream calls :meth:`CallbackChain.validate` once the first batch is drawn (iteration 0) and once the
last step is done (where mlx-lm's own validations would be). Val losses come at 0, N, 2N, ..., iters,
each measured on exactly the weights of that iteration: that is when :class:`BestAdapter` saves a new
best.

Stopping: when patience runs out, :class:`BestAdapter` sets ``stop_iteration``; the batch stream then
yields no more batches and mlx-lm's ``train()`` ends as after its last iteration. A NaN or infinite
loss is an error: :class:`DivergenceGuard` raises :class:`TrainingDiverged` (one line naming what to
change; the rows so far stay in ``metrics.jsonl``). It also warns once when the val loss has risen
``rising_warn_after`` evaluations in a row (overfitting).
"""

from __future__ import annotations

import tubetune.mlxrt  # noqa: F401  (the fast BLAS before mlx_lm loads mlx)

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
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


class TrainingDiverged(TubetuneError):
    """The train or val loss became NaN or infinite: training cannot recover, the run stops."""

    def __init__(self, message: str, iteration: int) -> None:
        super().__init__(message)
        self.iteration = iteration


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass
class BestAdapter(TrainingCallback):
    """Saves the adapter of the lowest val loss and says when to stop early.

    Args:
        save: writes the current trainable weights to the given path.
        best_path: ``adapters.safetensors``, rewritten at every new best val loss.
        patience: stop after this many evaluations that did not beat the loss of the last
            improvement by more than ``min_delta``; None never stops early.
        final_iteration: the last planned iteration (running out of patience there is no early stop).
        checkpoint_dir: where the adapter of every validation is saved too (None: not kept).
    """

    save: Callable[[Path], None]
    best_path: Path
    patience: int | None
    min_delta: float = 0.0
    final_iteration: int | None = None
    checkpoint_dir: Path | None = None
    best_loss: float = math.inf
    best_iteration: int | None = None
    evals_without_improvement: int = 0
    stop_iteration: int | None = None
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

    def on_val_loss_report(self, val_info: Mapping[str, Any]) -> None:
        iteration, loss = int(val_info["iteration"]), float(val_info["val_loss"])
        if not math.isfinite(loss):
            return  # no adapter to keep: DivergenceGuard ends the run
        is_best = self.update(iteration, loss)
        if is_best:
            self.save(self.best_path)
        if self.checkpoint_dir is not None:
            self.save(self.checkpoint_dir / f"{iteration:07d}_adapters.safetensors")
        out_of_patience = self.patience is not None and self.evals_without_improvement >= self.patience
        if out_of_patience and (self.final_iteration is None or iteration < self.final_iteration):
            self.stop_iteration = iteration

    def describe(self, iteration: int) -> str:
        """How the val loss of ``iteration`` compares with the best, for the log."""
        if self.best_iteration == iteration:
            return " (best so far, adapter saved)"
        return (f" (best {self.best_loss:.4f} at iter {self.best_iteration}, "
                f"{self.evals_without_improvement} evaluation(s) without improvement)")


@dataclass
class MetricsWriter(TrainingCallback):
    """Appends one row per train or val report to ``metrics.jsonl`` (truncated at start) and logs it.

    Args:
        batches_per_epoch: for the ``epoch`` column (iteration / batches_per_epoch).
        best: marks the val row of a new best val loss (``is_best``).
        learning_rate, peak_memory_gb: the current values, for val rows.
        progress: a tqdm bar that shows the last train loss.
    """

    path: Path
    batches_per_epoch: int
    best: BestAdapter | None = None
    learning_rate: Callable[[], float] | None = None
    peak_memory_gb: Callable[[], float] | None = None
    progress: Any = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    train_tokens: float = 0.0
    train_seconds: float = 0.0
    _previous_trained_tokens: float = 0.0

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")

    def epoch(self, iteration: int) -> float:
        return round(iteration / max(1, self.batches_per_epoch), 4)

    def _append(self, row: dict[str, Any]) -> None:
        full = {name: row.get(name) for name in METRIC_FIELDS}
        self.rows.append(full)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(full) + "\n")

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

    def on_val_loss_report(self, val_info: Mapping[str, Any]) -> None:
        iteration = int(val_info["iteration"])
        loss = _finite(val_info["val_loss"])
        self._append({
            "kind": "val",
            "iteration": iteration,
            "epoch": self.epoch(iteration),
            "val_loss": loss,
            "learning_rate": _finite(self.learning_rate()) if self.learning_rate else None,
            "peak_memory_gb": _finite(self.peak_memory_gb()) if self.peak_memory_gb else None,
            "val_time_s": _finite(val_info.get("val_time")),
            "is_best": loss is not None and self.best is not None and self.best.best_iteration == iteration,
        })
        if loss is not None:
            logger.info("iter %d (epoch %.2f): val loss %.4f%s", iteration, self.epoch(iteration), loss,
                        self.best.describe(iteration) if self.best else "")

    def val_losses(self) -> list[float | None]:
        return [row["val_loss"] for row in self.rows if row["kind"] == "val"]

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


@dataclass
class DivergenceGuard(TrainingCallback):
    """Raises :class:`TrainingDiverged` at a NaN / infinite loss; warns once about a rising val loss.

    Args:
        best: named in the rising-loss warning (the adapter that is kept).
        base_learning_rate: ``train.learning_rate``, named in the message when the loss diverges
            (None: the current learning rate of the schedule is named).
        learning_rate: the current learning rate (for a diverged val loss).
        rising_warn_after: warn once when the val loss has risen this many evaluations in a row (0: never).
    """

    best: BestAdapter | None = None
    base_learning_rate: float | None = None
    learning_rate: Callable[[], float] | None = None
    rising_warn_after: int = 3
    _previous: float | None = None
    _rising_evals: int = 0
    _rising_from: float | None = None
    _warned: bool = False

    def on_train_loss_report(self, train_info: Mapping[str, Any]) -> None:
        loss = train_info.get("train_loss")
        if loss is not None and not math.isfinite(float(loss)):
            current = _finite(train_info.get("learning_rate"))
            raise self._diverged("train", float(loss), int(train_info["iteration"]), current)

    def on_val_loss_report(self, val_info: Mapping[str, Any]) -> None:
        iteration, loss = int(val_info["iteration"]), float(val_info["val_loss"])
        if not math.isfinite(loss):
            current = _finite(self.learning_rate()) if self.learning_rate else None
            raise self._diverged("val", loss, iteration, current)
        self._watch_rising(iteration, loss)

    def _diverged(self, kind: str, loss: float, iteration: int, current_lr: float | None) -> TrainingDiverged:
        what = f"{kind} loss is {'NaN' if math.isnan(loss) else 'infinite'} at iteration {iteration}"
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
        previous, self._previous = self._previous, loss
        if previous is None or loss <= previous:
            self._rising_evals = 0
            self._rising_from = None
            return
        if self._rising_evals == 0:
            self._rising_from = previous
        self._rising_evals += 1
        due = self.rising_warn_after > 0 and self._rising_evals >= self.rising_warn_after
        if due and not self._warned:
            self._warned = True
            best_iteration = self.best.best_iteration if self.best else None
            best_loss = self.best.best_loss if self.best else math.nan
            logger.warning(
                "val loss has risen %d evaluations in a row (%.4f -> %.4f at iteration %d): the model is "
                "overfitting; the best adapter (iteration %s, val loss %.4f) is kept; to stop sooner set "
                "train.early_stopping_patience, or train fewer train.epochs / train.iters",
                self._rising_evals, self._rising_from, loss, iteration, best_iteration, best_loss,
            )


@dataclass
class CallbackChain(TrainingCallback):
    """mlx-lm's one ``training_callback``: each report goes to ``callbacks`` in order.

    ``evaluate`` returns the val loss of the current weights; it runs after the train report of
    every multiple of ``steps_per_eval`` below ``final_iteration`` and whenever :meth:`validate` is
    called (iteration 0 and the last one), and its report goes through the same chain.
    """

    callbacks: Sequence[TrainingCallback]
    evaluate: Callable[[], float] | None = None
    steps_per_eval: int = 0
    final_iteration: int | None = None

    def on_train_loss_report(self, train_info: Mapping[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_train_loss_report(dict(train_info))
        iteration = int(train_info["iteration"])
        due = self.steps_per_eval > 0 and iteration % self.steps_per_eval == 0
        before_last = self.final_iteration is None or iteration < self.final_iteration
        if self.evaluate is not None and due and before_last:
            self.validate(iteration)

    def validate(self, iteration: int) -> None:
        """Measure the val loss now and report it as ``iteration``."""
        assert self.evaluate is not None
        started = time.perf_counter()
        loss = self.evaluate()
        self.on_val_loss_report(
            {"iteration": iteration, "val_loss": loss, "val_time": time.perf_counter() - started}
        )

    def on_val_loss_report(self, val_info: Mapping[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_val_loss_report(dict(val_info))
