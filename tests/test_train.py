"""Fine-tuning (step 8) and fusing (step 9): callback, best adapter, early stopping, settings, memory check,
and a real tiny training run + fuse on the converted SmolLM2 model."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from tubetune.config import validate_config
from tubetune.errors import ConfigError
from tubetune.train.memory import (
    GB,
    MemoryEstimate,
    MemoryLimitError,
    ModelShape,
    check_memory,
    estimate_memory,
)
from tubetune.train.settings import TrainSettings, alpha_to_scale, epochs_to_iters

ROOT = Path(__file__).resolve().parents[1]

SMOLLM2 = ModelShape(
    num_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
    num_key_value_heads=3, head_dim=64, vocab_size=49152,
)


def load_config(**train: Any) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["train"].update(train)
    validate_config(config, ROOT / "config.schema.yaml")
    return config


# ------------------------------------------------------------------------------ callback (no model)


class Recorder:
    """Collects what the callback asks the runner to save."""

    def __init__(self) -> None:
        self.best: list[int] = []
        self.evals: list[int] = []


def make_callback(tmp_path: Path, *, patience: int | None = None, min_delta: float = 0.0,
                  final_iteration: int = 1000) -> tuple[Any, Recorder]:
    from tubetune.train.callback import EarlyStopping, MetricsCallback

    recorder = Recorder()
    callback = MetricsCallback(
        metrics_path=tmp_path / "metrics.jsonl",
        batches_per_epoch=10,
        stopper=EarlyStopping(patience, min_delta),
        final_iteration=final_iteration,
        save_best=recorder.best.append,
        on_eval=recorder.evals.append,
        learning_rate=lambda: 1e-4,
        peak_memory_gb=lambda: 0.5,
    )
    return callback, recorder


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_callback_appends_metric_rows_as_they_happen(tmp_path: Path) -> None:
    from tubetune.train.callback import METRIC_FIELDS

    callback, _ = make_callback(tmp_path)
    callback.on_val_loss_report({"iteration": 0, "val_loss": 3.0, "val_time": 1.5})
    assert len(read_rows(tmp_path / "metrics.jsonl")) == 1
    callback.on_train_loss_report({
        "iteration": 5, "train_loss": 2.5, "learning_rate": 2e-4, "iterations_per_second": 1.0,
        "tokens_per_second": 100.0, "trained_tokens": 500, "peak_memory": 1.25,
    })
    callback.on_train_loss_report({
        "iteration": 10, "train_loss": 2.0, "learning_rate": 1e-4, "iterations_per_second": 1.0,
        "tokens_per_second": 300.0, "trained_tokens": 1100, "peak_memory": 1.5,
    })
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [row["kind"] for row in rows] == ["val", "train", "train"]
    for row in rows:
        assert tuple(row) == METRIC_FIELDS
    val, first, second = rows
    assert val["val_loss"] == 3.0 and val["is_best"] is True and val["learning_rate"] == 1e-4
    assert val["peak_memory_gb"] == 0.5 and val["train_loss"] is None
    assert first["train_loss"] == 2.5 and first["tokens_per_second"] == 100.0
    assert first["peak_memory_gb"] == 1.25 and first["learning_rate"] == 2e-4
    assert first["epoch"] == 0.5 and second["epoch"] == 1.0
    # 500 tokens in 5 s, then 600 tokens in 2 s: 1100 / 7 tokens per second overall
    assert callback.mean_tokens_per_second == pytest.approx(1100 / 7)
    assert callback.final_train_loss == 2.0


def test_callback_writes_null_for_nan_loss(tmp_path: Path) -> None:
    from tubetune.train.callback import TrainingDiverged

    callback, recorder = make_callback(tmp_path)
    with pytest.raises(TrainingDiverged):  # a NaN loss stops training (tests/test_callback_guards.py)
        callback.on_val_loss_report({"iteration": 0, "val_loss": float("nan"), "val_time": 1.0})
    row = read_rows(tmp_path / "metrics.jsonl")[0]
    assert row["val_loss"] is None and row["is_best"] is False
    assert recorder.best == []


def test_best_checkpoint_is_the_minimum_val_loss(tmp_path: Path) -> None:
    callback, recorder = make_callback(tmp_path)
    losses = [2.0, 1.5, 1.7, 1.2, 1.3, 1.25]
    for step, loss in enumerate(losses):
        callback.on_val_loss_report({"iteration": step * 10, "val_loss": loss, "val_time": 0.1})
    assert recorder.best == [0, 10, 30]
    assert recorder.evals == [0, 10, 20, 30, 40, 50]
    assert callback.stopper.best_iteration == 30
    assert callback.stopper.best_loss == 1.2
    flags = [row["is_best"] for row in read_rows(tmp_path / "metrics.jsonl")]
    assert flags == [True, True, False, True, False, False]


def test_early_stopping_after_patience(tmp_path: Path) -> None:
    from tubetune.train.callback import StopTraining

    callback, recorder = make_callback(tmp_path, patience=3)
    for step, loss in enumerate([2.0, 1.5, 1.6, 1.55]):
        callback.on_val_loss_report({"iteration": step, "val_loss": loss, "val_time": 0.1})
    with pytest.raises(StopTraining) as stopped:
        callback.on_val_loss_report({"iteration": 4, "val_loss": 1.7, "val_time": 0.1})
    assert stopped.value.reason == "early_stopped" and stopped.value.iteration == 4
    assert recorder.best == [0, 1]
    assert len(read_rows(tmp_path / "metrics.jsonl")) == 5


def test_patience_resets_on_improvement_and_respects_min_delta(tmp_path: Path) -> None:
    from tubetune.train.callback import StopTraining

    callback, recorder = make_callback(tmp_path, patience=2, min_delta=0.05)
    callback.on_val_loss_report({"iteration": 0, "val_loss": 2.0, "val_time": 0.1})
    callback.on_val_loss_report({"iteration": 1, "val_loss": 1.98, "val_time": 0.1})  # best, but < min_delta
    assert recorder.best == [0, 1] and callback.stopper.evals_without_improvement == 1
    callback.on_val_loss_report({"iteration": 2, "val_loss": 1.5, "val_time": 0.1})  # real improvement
    assert callback.stopper.evals_without_improvement == 0
    callback.on_val_loss_report({"iteration": 3, "val_loss": 1.49, "val_time": 0.1})
    with pytest.raises(StopTraining):
        callback.on_val_loss_report({"iteration": 4, "val_loss": 1.6, "val_time": 0.1})
    assert callback.stopper.best_iteration == 3


def test_no_early_stop_without_patience_but_stop_at_final_iteration(tmp_path: Path) -> None:
    from tubetune.train.callback import StopTraining

    callback, _ = make_callback(tmp_path, patience=None, final_iteration=6)
    for step, loss in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        callback.on_val_loss_report({"iteration": step, "val_loss": loss, "val_time": 0.1})
    with pytest.raises(StopTraining) as stopped:
        callback.on_val_loss_report({"iteration": 6, "val_loss": 6.0, "val_time": 0.1})
    assert stopped.value.reason == "completed"


# ---------------------------------------------------------------------------------------- settings


def test_epochs_to_iters() -> None:
    assert epochs_to_iters(2, 48, 4) == 24
    assert epochs_to_iters(1, 50, 4) == 12  # mlx-lm drops the incomplete last batch
    assert epochs_to_iters(1.5, 50, 4) == 18
    assert epochs_to_iters(0.1, 30, 1) == 3
    assert epochs_to_iters(1, 50, 4, multiple_of=8) == 16
    with pytest.raises(ConfigError, match="batch_size"):
        epochs_to_iters(1, 3, 4)
    settings = TrainSettings.from_config({"epochs": 3, "batch_size": 8})
    assert settings.resolve_iters(100) == 36
    assert TrainSettings.from_config({"iters": 7}).resolve_iters(100) == 7


def test_alpha_to_scale() -> None:
    assert alpha_to_scale(16, 8) == 2.0
    assert alpha_to_scale(32, 16) == 2.0
    settings = TrainSettings.from_config({"iters": 1, "rank": 4, "alpha": 32, "dropout": 0.05})
    assert settings.scale == 8.0
    assert settings.lora_parameters() == {"rank": 4, "scale": 8.0, "dropout": 0.05}
    keyed = TrainSettings.from_config({"iters": 1, "lora_keys": ["self_attn.q_proj"]})
    assert keyed.lora_parameters()["keys"] == ["self_attn.q_proj"]


def test_iters_and_epochs_are_exclusive() -> None:
    with pytest.raises(ConfigError, match=r"exactly one of train\.iters and train\.epochs"):
        TrainSettings.from_config({"iters": 10, "epochs": 2})
    with pytest.raises(ConfigError, match="exactly one"):
        TrainSettings.from_config({})
    with pytest.raises(ConfigError, match="unknown train key"):
        TrainSettings.from_config({"iters": 1, "rnak": 2})


def test_learning_rate_outside_range_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tubetune.train.settings"):
        TrainSettings.from_config({"iters": 1, "learning_rate": 5e-3})
    assert "outside the usual range" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tubetune.train.settings"):
        TrainSettings.from_config({"iters": 1, "learning_rate": 1e-4})
    assert caplog.text == ""


@pytest.mark.parametrize("profile", ["cpu-smollm2", "mac16gb-llama3b", "tiny-test"])
def test_profiles_resolve(profile: str) -> None:
    config = load_config(profile=profile)
    settings = TrainSettings.from_config(config["train"])
    assert settings.profile == profile
    assert 1e-6 <= settings.learning_rate <= 1e-3
    assert settings.mask_prompt


def test_explicit_train_key_overrides_profile() -> None:
    config = load_config(profile="cpu-smollm2", rank=16, epochs=None, iters=5)
    settings = TrainSettings.from_config(config["train"])
    assert (settings.rank, settings.iters, settings.epochs, settings.batch_size) == (16, 5, None, 4)


def test_profile_with_unknown_key_is_a_config_error() -> None:
    config: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["train_profiles"]["tiny-test"]["rnak"] = 3
    with pytest.raises(ConfigError, match="did you mean 'rank'"):
        validate_config(config, ROOT / "config.schema.yaml")


# ------------------------------------------------------------------------------------------ memory


def test_memory_estimate_formula() -> None:
    estimate = estimate_memory(
        SMOLLM2, weights_bytes=540_000_000, trainable_params=1_000_000, activation_bytes=4,
        batch_size=4, seq_len=512, trained_layers=30, grad_checkpoint=False,
    )
    per_token_layer = 8 * 576 + 2 * 192 + 4 * 1536 + 9 * 512
    assert estimate.activations == 4 * 512 * 30 * per_token_layer * 4
    assert estimate.logits == 4 * 512 * 49152 * (2 * 4 + 8)
    assert estimate.trainable == 1_000_000 * 4 * 3
    assert estimate.total == estimate.weights + estimate.trainable + estimate.activations + estimate.logits
    checkpointed = estimate_memory(
        SMOLLM2, weights_bytes=540_000_000, trainable_params=1_000_000, activation_bytes=4,
        batch_size=4, seq_len=512, trained_layers=30, grad_checkpoint=True, grad_accumulation_steps=4,
    )
    assert checkpointed.activations < estimate.activations / 10
    assert checkpointed.trainable == 1_000_000 * 4 * 4


def test_memory_over_limit_fails_with_one_line_of_advice() -> None:
    estimate = MemoryEstimate(weights=6 * int(GB), trainable=0, activations=5 * int(GB), logits=2 * int(GB))
    check_memory(estimate, 14.0, grad_checkpoint=False)
    with pytest.raises(MemoryLimitError) as failed:
        check_memory(estimate, 12.0, grad_checkpoint=False)
    message = str(failed.value)
    assert "\n" not in message
    assert "13.0 GB" in message and "12.0 GB" in message
    for advice in ("train.batch_size", "train.max_seq_length", "train.grad_checkpoint",
                   "train.num_layers", "train.max_memory_gb"):
        assert advice in message
    with pytest.raises(MemoryLimitError) as again:
        check_memory(estimate, 12.0, grad_checkpoint=True)
    assert "grad_checkpoint" not in str(again.value)


def test_blas_threads_leave_busy_cores_alone() -> None:
    from tubetune.train.runner import choose_blas_threads

    assert choose_blas_threads(2, cores=2, busy=0.0) == 2
    assert choose_blas_threads(2, cores=2, busy=0.3) == 2
    assert choose_blas_threads(2, cores=2, busy=1.0) == 1
    assert choose_blas_threads(2, cores=2, busy=3.0) == 1
    assert choose_blas_threads(8, cores=16, busy=4.0) == 8
    assert choose_blas_threads(16, cores=16, busy=4.0) == 12


def test_model_shape_from_config() -> None:
    config = json.loads(json.dumps({
        "hidden_size": 3072, "num_hidden_layers": 28, "intermediate_size": 8192,
        "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
    }))
    shape = ModelShape.from_config(config)
    assert shape.kv_width == 1024 and shape.num_layers == 28


# ------------------------------------------------------------------------------- real training run


def _tiny_settings(**overrides: Any) -> TrainSettings:
    config = load_config(profile="tiny-test", **overrides)
    return TrainSettings.from_config(config["train"])


@pytest.fixture(scope="module")
def trained(
    base_model_dir: Path, chat_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A real 8-iteration LoRA run (tiny-test profile, val every 2, all checkpoints kept)."""
    from tubetune.train.runner import TrainOutputs, run_training

    out = tmp_path_factory.mktemp("train")
    settings = _tiny_settings(
        iters=8, steps_per_eval=2, keep_eval_checkpoints=True, grad_accumulation_steps=2,
        learning_rate=1e-3, seed=3,
    )
    outputs = TrainOutputs.in_dir(out)
    summary = run_training(chat_dataset_dir / "train.jsonl", chat_dataset_dir / "valid.jsonl", base_model_dir,
                           outputs, settings)
    return {"summary": summary, "outputs": outputs, "settings": settings, "out": out}


def _load(path: Path) -> dict[str, Any]:
    import mlx.core as mx

    loaded = mx.load(str(path))
    assert isinstance(loaded, dict)
    return loaded


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import mlx.core as mx

    return a.keys() == b.keys() and all(bool(mx.array_equal(a[k], b[k])) for k in a)


@pytest.mark.slow
def test_real_run_keeps_the_best_adapter(trained: dict[str, Any]) -> None:
    outputs, summary = trained["outputs"], trained["summary"]
    rows = read_rows(outputs.metrics)
    val = [row for row in rows if row["kind"] == "val"]
    train = [row for row in rows if row["kind"] == "train"]
    assert [row["iteration"] for row in val] == [0, 2, 4, 6, 8]
    assert [row["iteration"] for row in train] == [2, 4, 6, 8]
    assert all(row["tokens_per_second"] > 0 and row["peak_memory_gb"] > 0 for row in train)
    # 48 examples in batches of 2: 24 batches per epoch
    assert [row["epoch"] for row in train] == [round(i / 24, 4) for i in (2, 4, 6, 8)]
    best = min(val, key=lambda row: row["val_loss"])
    assert summary["best_iteration"] == best["iteration"]
    assert summary["best_val_loss"] == pytest.approx(best["val_loss"])
    assert val[-1]["val_loss"] < val[0]["val_loss"]  # it learned something
    checkpoints = {int(p.name[:7]): _load(p) for p in sorted(outputs.checkpoint_dir.glob("*.safetensors"))}
    assert sorted(checkpoints) == [0, 2, 4, 6, 8]
    best_weights = _load(outputs.adapters)
    assert _same(best_weights, checkpoints[best["iteration"]])
    assert _same(_load(outputs.last), checkpoints[8])
    assert not _same(checkpoints[0], checkpoints[8])
    assert all(".lora_a" in name or ".lora_b" in name for name in best_weights)


@pytest.mark.slow
def test_real_run_summary_plot_and_adapter_config(trained: dict[str, Any]) -> None:
    outputs, summary, settings = trained["outputs"], trained["summary"], trained["settings"]
    on_disk = json.loads(outputs.summary.read_text())
    assert on_disk["iterations_run"] == 8 and on_disk["early_stopped"] is False
    assert on_disk["resolved"]["optimizer_updates"] == 4
    assert on_disk["resolved"]["lora_scale"] == 2.0
    assert on_disk["settings"] == settings.as_dict()
    assert on_disk["seed"] == 3
    assert on_disk["dataset"]["train"]["examples"] == 48 and on_disk["dataset"]["valid"]["examples"] == 8
    assert on_disk["tokens_per_second_mean"] > 0 and on_disk["peak_memory_gb"] > 0
    assert on_disk["train_loss_function"] == "target_loss"  # SmolLM2 is a llama: logits at targets only
    assert on_disk["final_train_loss"] == summary["final_train_loss"]
    assert "BLAS" in on_disk["blas"] or "Accelerate" in on_disk["blas"]
    assert outputs.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads(outputs.adapter_config.read_text())
    assert config["fine_tune_type"] == "lora" and config["num_layers"] == 2
    assert config["lora_parameters"] == {"rank": 4, "scale": 2.0, "dropout": 0.0}


@pytest.mark.slow
def test_val_loss_is_measured_like_the_test_loss(trained: dict[str, Any], base_model_dir: Path,
                                                  chat_dataset_dir: Path) -> None:
    """Iteration 0 (no-op adapter) scores the base model on valid.jsonl exactly as evaluate does."""
    from mlx_lm import load

    from tubetune.evaluate.loss import dataset_loss
    from tubetune.jsonio import read_jsonl

    val = [row for row in read_rows(trained["outputs"].metrics) if row["kind"] == "val"]
    loaded = load(str(base_model_dir))
    model, tokenizer = loaded[0], loaded[1]
    rows = read_jsonl(chat_dataset_dir / "valid.jsonl")
    settings = trained["settings"]
    expected = dataset_loss(model, tokenizer, rows, batch_size=settings.batch_size,
                            max_seq_length=settings.max_seq_length)
    # mlx-lm's default loss also scores one padding token per example and would differ by ~0.1-0.8
    assert val[0]["val_loss"] == pytest.approx(expected.loss, abs=2e-4)


@pytest.mark.slow
def test_fused_model_matches_base_plus_best_adapter(
    trained: dict[str, Any], base_model_dir: Path, tmp_path: Path
) -> None:
    import mlx.core as mx
    from mlx_lm import utils as mlx_utils

    from tubetune.train.fuse import fuse_adapters

    adapter_dir = trained["outputs"].adapter_dir
    result = fuse_adapters(base_model_dir, adapter_dir, tmp_path / "fused")
    assert result.fused_layers == 14  # 7 linear layers x 2 blocks
    fused_dir = tmp_path / "fused"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (fused_dir / name).is_file()
    assert (fused_dir / "tokenizer.json").read_bytes() == (base_model_dir / "tokenizer.json").read_bytes()
    assert json.loads((fused_dir / "config.json").read_text())["model_type"] == "llama"
    tokens = mx.array([[1, 504, 3458, 314, 253, 1345, 30, 2]])
    adapted = mlx_utils.load(str(base_model_dir), adapter_path=str(adapter_dir))[0]
    fused = mlx_utils.load(str(fused_dir))[0]
    assert mx.allclose(adapted(tokens), fused(tokens), atol=1e-3).item()
    plain = mlx_utils.load(str(base_model_dir))[0]
    assert not mx.allclose(plain(tokens), fused(tokens), atol=1e-3).item()
    weights = mx.load(str(fused_dir / "model.safetensors"))
    assert not any("lora" in name for name in weights)


@pytest.mark.slow
def test_memory_limit_stops_before_training(
    base_model_dir: Path, chat_dataset_dir: Path, tmp_path: Path
) -> None:
    from tubetune.train.runner import TrainOutputs, run_training

    outputs = TrainOutputs.in_dir(tmp_path)
    with pytest.raises(MemoryLimitError, match=r"lower train\.batch_size"):
        run_training(chat_dataset_dir / "train.jsonl", chat_dataset_dir / "valid.jsonl", base_model_dir,
                     outputs, _tiny_settings(max_memory_gb=0.1))
    assert not outputs.metrics.exists() and not outputs.adapters.exists()


def test_bad_dataset_row_is_a_one_line_error(tmp_path: Path) -> None:
    from tubetune.errors import InputFileError
    from tubetune.train.runner import load_chat_split

    path = tmp_path / "train.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = copy.deepcopy(good)
    bad["messages"].reverse()
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InputFileError, match=r"train.jsonl:2: the last message must be the assistant"):
        load_chat_split(path, need_assistant_last=True)
    assert len(load_chat_split(path, need_assistant_last=False)) == 2
