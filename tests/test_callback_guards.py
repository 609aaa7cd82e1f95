"""Training guards among the mlx-lm callbacks: a NaN / infinite loss stops training with one clear line,
and a val loss that keeps rising is warned about once."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from tubetune.errors import TubetuneError


def make_callback(
    tmp_path: Path,
    *,
    saved: list[Path] | None = None,
    evaluate: Any = None,
    steps_per_eval: int = 0,
    **guard: Any,
) -> Any:
    """The runner's chain: best adapter (saves into ``saved``), metrics writer, the guard (``guard``)."""
    from tubetune.train.callback import BestAdapter, CallbackChain, DivergenceGuard, MetricsWriter

    best = BestAdapter(save=(saved.append if saved is not None else lambda path: None),
                       best_path=tmp_path / "adapters.safetensors", patience=None, final_iteration=1000)
    metrics = MetricsWriter(path=tmp_path / "metrics.jsonl", batches_per_epoch=10, best=best,
                            learning_rate=lambda: 1e-4, peak_memory_gb=lambda: 0.5)
    divergence = DivergenceGuard(best=best, learning_rate=lambda: 1e-4, **guard)
    return CallbackChain([best, metrics, divergence], evaluate=evaluate, steps_per_eval=steps_per_eval,
                         final_iteration=1000)


def train_report(iteration: int, loss: float, learning_rate: float = 2e-4) -> dict[str, Any]:
    return {
        "iteration": iteration, "train_loss": loss, "learning_rate": learning_rate,
        "iterations_per_second": 1.0, "tokens_per_second": 100.0, "trained_tokens": 100 * iteration,
        "peak_memory": 1.0,
    }


def val_report(iteration: int, loss: float) -> dict[str, Any]:
    return {"iteration": iteration, "val_loss": loss, "val_time": 0.1}


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_nan_train_loss_stops_with_one_line_naming_the_learning_rate(tmp_path: Path) -> None:
    from tubetune.train.callback import TrainingDiverged

    callback = make_callback(tmp_path, base_learning_rate=1e-3)
    callback.on_val_loss_report(val_report(0, 3.0))
    callback.on_train_loss_report(train_report(2, 2.5))
    with pytest.raises(TrainingDiverged) as stopped:
        callback.on_train_loss_report(train_report(4, math.nan))
    error = stopped.value
    assert isinstance(error, TubetuneError)  # run_step turns it into one log line and exit status 1
    assert str(error).startswith(
        "train loss is NaN at iteration 4: training diverged; lower train.learning_rate (now 0.001)"
    )
    assert "\n" not in str(error) and error.iteration == 4
    # the rows so far stay in metrics.jsonl, the diverged one with a null loss
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [(row["kind"], row["iteration"], row["train_loss"]) for row in rows] == [
        ("val", 0, None), ("train", 2, 2.5), ("train", 4, None),
    ]


def test_infinite_train_loss_names_the_current_rate_without_a_base_rate(tmp_path: Path) -> None:
    from tubetune.train.callback import TrainingDiverged

    callback = make_callback(tmp_path)
    with pytest.raises(TrainingDiverged, match=r"^train loss is infinite at iteration 6: .*\(now 0\.0002\)"):
        callback.on_train_loss_report(train_report(6, math.inf, learning_rate=2e-4))


def test_nan_train_loss_stops_before_the_validation_that_was_due(tmp_path: Path) -> None:
    from tubetune.train.callback import TrainingDiverged

    evaluated: list[int] = []

    def evaluate() -> float:
        evaluated.append(1)
        return 2.0

    callback = make_callback(tmp_path, evaluate=evaluate, steps_per_eval=2)
    with pytest.raises(TrainingDiverged):
        callback.on_train_loss_report(train_report(2, math.nan))
    assert evaluated == []


def test_nan_val_loss_stops_training(tmp_path: Path) -> None:
    from tubetune.train.callback import TrainingDiverged

    saved: list[Path] = []
    callback = make_callback(tmp_path, saved=saved)
    callback.on_val_loss_report(val_report(0, 3.0))
    expected = r"^val loss is NaN at iteration 10: .*train\.learning_rate \(now 0\.0001\)"
    with pytest.raises(TrainingDiverged, match=expected):
        callback.on_val_loss_report(val_report(10, math.nan))
    assert saved == [tmp_path / "adapters.safetensors"]  # once, at iteration 0
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [row["val_loss"] for row in rows] == [3.0, None]
    assert rows[-1]["is_best"] is False


def test_nan_val_loss_before_training_points_at_the_data(tmp_path: Path) -> None:
    from tubetune.train.callback import TrainingDiverged

    callback = make_callback(tmp_path)
    with pytest.raises(TrainingDiverged) as stopped:
        callback.on_val_loss_report(val_report(0, math.nan))
    message = str(stopped.value)
    assert message.startswith("val loss is NaN at iteration 0, before any training step")
    assert "results/dataset/valid.jsonl" in message and "train.max_seq_length" in message


def rising_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "val loss has risen" in r.getMessage()]


def test_rising_val_loss_is_warned_about_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    callback = make_callback(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tubetune.train.callback"):
        for step, loss in enumerate([3.0, 2.5, 2.6, 2.7]):
            callback.on_val_loss_report(val_report(step * 10, loss))
        assert rising_warnings(caplog) == []
        callback.on_val_loss_report(val_report(40, 2.8))  # the third rise in a row
        callback.on_val_loss_report(val_report(50, 2.9))
        callback.on_val_loss_report(val_report(60, 2.4))
        for step, loss in enumerate([2.5, 2.6, 2.7], start=7):
            callback.on_val_loss_report(val_report(step * 10, loss))
    warnings = rising_warnings(caplog)
    assert warnings == [
        "val loss has risen 3 evaluations in a row (2.5000 -> 2.8000 at iteration 40): the model is "
        "overfitting; the best adapter (iteration 10, val loss 2.5000) is kept; to stop sooner set "
        "train.early_stopping_patience, or train fewer train.epochs / train.iters"
    ]


def test_a_fall_resets_the_rising_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    callback = make_callback(tmp_path, rising_warn_after=2)
    with caplog.at_level(logging.WARNING, logger="tubetune.train.callback"):
        for step, loss in enumerate([3.0, 3.1, 2.9, 3.0, 2.8, 2.9]):
            callback.on_val_loss_report(val_report(step, loss))
        assert rising_warnings(caplog) == []
        callback.on_val_loss_report(val_report(6, 3.0))
    assert len(rising_warnings(caplog)) == 1
    assert "has risen 2 evaluations in a row (2.8000 -> 3.0000 at iteration 6)" in rising_warnings(caplog)[0]


@pytest.mark.slow
def test_a_real_diverging_run_stops_with_the_guard(
    base_model_dir: Path, chat_dataset_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """mlx-lm on the converted SmolLM2 with an absurd learning rate: the weights overflow within two
    steps, and the run stops there (TrainingDiverged, logged as one error line) instead of training on
    NaN to the end; the best adapter before it and a summary saying so are kept (a sweep ranks it)."""
    import yaml

    from tubetune.config import validate_config
    from tubetune.settings import settings_from
    from tubetune.train.reproduce import run_layout
    from tubetune.train.runner import run_training
    from tubetune.train.settings import TrainSettings

    root = Path(__file__).resolve().parents[1]
    config: dict[str, Any] = yaml.safe_load((root / "config.yaml").read_text())
    config["train"].update(profile="tiny-test", learning_rate=1e30, iters=6, warmup_ratio=0.0)
    validate_config(config, root / "config.schema.yaml")
    outputs = run_layout(tmp_path)
    with caplog.at_level(logging.ERROR, logger="tubetune.train.runner"):
        settings = settings_from(TrainSettings, config["train"], "train")
        summary = run_training(chat_dataset_dir / "train.jsonl", chat_dataset_dir / "valid.jsonl",
                               base_model_dir, outputs, settings)
    assert summary["diverged"]["iteration"] == 2 and summary["iterations_run"] == 2
    assert summary["diverged"]["message"].startswith("train loss is NaN at iteration 2: training diverged; ")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0] == summary["diverged"]["message"]
    assert summary["best_iteration"] == 0 and outputs.adapters.is_file()
    rows = read_rows(outputs.metrics)
    assert [(row["kind"], row["iteration"]) for row in rows] == [("val", 0), ("train", 2)]
    assert rows[0]["val_loss"] is not None and rows[1]["train_loss"] is None
