"""Fine-tuning (step 8) and fusing (step 9): callback, best adapter, early stopping, settings, memory check,
and a real tiny training run + fuse on the converted SmolLM2 model."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tubetune.config import section_config, validate_config
from tubetune.errors import ConfigError
from tubetune.settings import settings_from
from tubetune.train.memory import (
    GB,
    MemoryEstimate,
    MemoryLimitError,
    ModelShape,
    check_memory,
    estimate_memory,
)
from tubetune.train.runner import on_gpu
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


def train_settings(**values: Any) -> TrainSettings:
    """Settings from the schema's defaults (no profile) and ``values``."""
    return settings_from(TrainSettings, section_config("train", {"profile": None, **values}), "train")


# ----------------------------------------------------------------------------- callbacks (no model)


class Recorder:
    """Collects what the best-adapter callback saves: best iterations and checkpoint iterations."""

    def __init__(self) -> None:
        self.best: list[int] = []
        self.evals: list[int] = []
        self.tracker: Any = None

    def save(self, path: Path) -> None:
        if path.name == "adapters.safetensors":
            self.best.append(self.tracker.best_iteration)
        else:
            self.evals.append(int(path.name[:7]))


def make_callbacks(tmp_path: Path, *, patience: int | None = None, min_delta: float = 0.0,
                   final_iteration: int = 1000, evaluate: Any = None, steps_per_eval: int = 0
                   ) -> tuple[Any, Any, Any, Recorder]:
    """The chain the runner builds (best adapter, metrics writer, divergence guard): chain, writer, best."""
    from tubetune.train.callback import BestAdapter, CallbackChain, DivergenceGuard, MetricsWriter

    recorder = Recorder()
    best = BestAdapter(
        save=recorder.save, best_path=tmp_path / "adapters.safetensors", patience=patience,
        min_delta=min_delta, final_iteration=final_iteration, checkpoint_dir=tmp_path / "checkpoints",
    )
    recorder.tracker = best
    metrics = MetricsWriter(path=tmp_path / "metrics.jsonl", batches_per_epoch=10, best=best,
                            learning_rate=lambda: 1e-4, peak_memory_gb=lambda: 0.5)
    chain = CallbackChain([best, metrics, DivergenceGuard(best=best)], evaluate=evaluate,
                          steps_per_eval=steps_per_eval, final_iteration=final_iteration)
    return chain, metrics, best, recorder


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def val(iteration: int, loss: float) -> dict[str, Any]:
    return {"iteration": iteration, "val_loss": loss, "val_time": 0.1}


def test_metric_rows_are_appended_as_they_happen(tmp_path: Path) -> None:
    from tubetune.train.callback import METRIC_FIELDS

    chain, metrics, _, _ = make_callbacks(tmp_path)
    chain.on_val_loss_report({"iteration": 0, "val_loss": 3.0, "val_time": 1.5})
    assert len(read_rows(tmp_path / "metrics.jsonl")) == 1
    chain.on_train_loss_report({
        "iteration": 5, "train_loss": 2.5, "learning_rate": 2e-4, "iterations_per_second": 1.0,
        "tokens_per_second": 100.0, "trained_tokens": 500, "peak_memory": 1.25,
    })
    chain.on_train_loss_report({
        "iteration": 10, "train_loss": 2.0, "learning_rate": 1e-4, "iterations_per_second": 1.0,
        "tokens_per_second": 300.0, "trained_tokens": 1100, "peak_memory": 1.5,
    })
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [row["kind"] for row in rows] == ["val", "train", "train"]
    for row in rows:
        assert tuple(row) == METRIC_FIELDS
    first_val, first, second = rows
    assert first_val["val_loss"] == 3.0 and first_val["is_best"] is True
    assert first_val["learning_rate"] == 1e-4
    assert first_val["peak_memory_gb"] == 0.5 and first_val["train_loss"] is None
    assert first["train_loss"] == 2.5 and first["tokens_per_second"] == 100.0
    assert first["peak_memory_gb"] == 1.25 and first["learning_rate"] == 2e-4
    assert first["epoch"] == 0.5 and second["epoch"] == 1.0
    # 500 tokens in 5 s, then 600 tokens in 2 s: 1100 / 7 tokens per second overall
    assert metrics.mean_tokens_per_second == pytest.approx(1100 / 7)
    assert metrics.final_train_loss == 2.0


def test_nan_val_loss_is_written_as_null(tmp_path: Path) -> None:
    from tubetune.train.callback import TrainingDiverged

    chain, _, _, recorder = make_callbacks(tmp_path)
    with pytest.raises(TrainingDiverged):  # a NaN loss stops training (tests/test_callback_guards.py)
        chain.on_val_loss_report({"iteration": 0, "val_loss": float("nan"), "val_time": 1.0})
    row = read_rows(tmp_path / "metrics.jsonl")[0]
    assert row["val_loss"] is None and row["is_best"] is False
    assert recorder.best == [] and recorder.evals == []


def test_best_checkpoint_is_the_minimum_val_loss(tmp_path: Path) -> None:
    chain, _, best, recorder = make_callbacks(tmp_path)
    losses = [2.0, 1.5, 1.7, 1.2, 1.3, 1.25]
    for step, loss in enumerate(losses):
        chain.on_val_loss_report(val(step * 10, loss))
    assert recorder.best == [0, 10, 30]
    assert recorder.evals == [0, 10, 20, 30, 40, 50]
    assert best.best_iteration == 30
    assert best.best_loss == 1.2
    flags = [row["is_best"] for row in read_rows(tmp_path / "metrics.jsonl")]
    assert flags == [True, True, False, True, False, False]


def test_early_stopping_after_patience(tmp_path: Path) -> None:
    chain, _, best, recorder = make_callbacks(tmp_path, patience=3)
    for step, loss in enumerate([2.0, 1.5, 1.6, 1.55]):
        chain.on_val_loss_report(val(step, loss))
    assert best.stop_iteration is None
    chain.on_val_loss_report(val(4, 1.7))
    assert best.stop_iteration == 4
    assert recorder.best == [0, 1]
    assert len(read_rows(tmp_path / "metrics.jsonl")) == 5


def test_patience_resets_on_improvement_and_respects_min_delta(tmp_path: Path) -> None:
    chain, _, best, recorder = make_callbacks(tmp_path, patience=2, min_delta=0.05)
    chain.on_val_loss_report(val(0, 2.0))
    chain.on_val_loss_report(val(1, 1.98))  # best, but < min_delta
    assert recorder.best == [0, 1] and best.evals_without_improvement == 1
    chain.on_val_loss_report(val(2, 1.5))  # real improvement
    assert best.evals_without_improvement == 0
    chain.on_val_loss_report(val(3, 1.49))
    assert best.stop_iteration is None
    chain.on_val_loss_report(val(4, 1.6))
    assert best.stop_iteration == 4 and best.best_iteration == 3


def test_no_early_stop_without_patience_nor_at_the_final_iteration(tmp_path: Path) -> None:
    chain, _, best, _ = make_callbacks(tmp_path, patience=None)
    for step, loss in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):
        chain.on_val_loss_report(val(step, loss))
    assert best.stop_iteration is None
    chain, _, best, _ = make_callbacks(tmp_path / "final", patience=1, final_iteration=1)
    chain.on_val_loss_report(val(0, 1.0))
    chain.on_val_loss_report(val(1, 2.0))  # out of patience at the last iteration: the run ends anyway
    assert best.stop_iteration is None and best.evals_without_improvement == 1


def test_validation_after_the_train_report_of_every_steps_per_eval(tmp_path: Path) -> None:
    losses = iter([2.0, 1.8, 1.9, 1.7])
    chain, _, best, _ = make_callbacks(tmp_path, evaluate=lambda: next(losses), steps_per_eval=4,
                                       final_iteration=8)
    chain.validate(0)
    for iteration in (2, 4, 6, 8):
        chain.on_train_loss_report({"iteration": iteration, "train_loss": 2.0, "learning_rate": 1e-4,
                                    "tokens_per_second": 10.0, "trained_tokens": 10 * iteration})
    chain.validate(8)  # the last iteration: validated by the batch stream, once
    rows = read_rows(tmp_path / "metrics.jsonl")
    assert [(row["kind"], row["iteration"]) for row in rows] == [
        ("val", 0), ("train", 2), ("train", 4), ("val", 4), ("train", 6), ("train", 8), ("val", 8),
    ]
    assert [row["val_loss"] for row in rows if row["kind"] == "val"] == [2.0, 1.8, 1.9]
    assert best.best_iteration == 4


def test_batch_stream_validates_around_the_steps_and_ends_train_cleanly() -> None:
    from tubetune.train.runner import batch_stream

    events: list[str] = []

    class Progress:
        def update(self, steps: int) -> None:
            events.append("step done")

    class Blas:
        def adjust(self) -> None:
            events.append("blas")

    def iterate(steps: int, stop_after: int = 100) -> list[Any]:
        events.clear()
        blas: Any = Blas()
        stream = batch_stream(Progress(), blas, steps=steps,
                              validate=lambda iteration: events.append(f"validate {iteration}"),
                              stop=lambda: events.count("step done") >= stop_after, every=2)
        # mlx-lm's loop: for it, batch in zip(range(1, iters + 1), iterate_batches(...))
        batches = stream(dataset, batch_size=2, max_seq_length=16, loop=True)
        return list(zip(range(1, steps + 2), batches, strict=False))

    dataset = [([1, 2, 3, 4], 1) for _ in range(8)]  # 4 batches per epoch
    assert len(iterate(steps=5)) == 5  # train() gets one iteration more than it runs
    assert events == ["validate 0", *["step done"] * 2, "blas", *["step done"] * 2, "blas", "step done",
                      "validate 5"]
    assert len(iterate(steps=5, stop_after=3)) == 3  # early stop: no more batches, no exception
    assert events == ["validate 0", "step done", "step done", "blas", "step done"]
    blas: Any = Blas()
    plain = batch_stream(Progress(), blas, steps=1, validate=print, stop=lambda: True)
    assert len(list(plain(dataset, batch_size=2, max_seq_length=16))) == 4  # validation passes: no hooks


# ---------------------------------------------------------------------------------------- settings


def test_epochs_to_iters() -> None:
    assert epochs_to_iters(2, 48, 4) == 24
    assert epochs_to_iters(1, 50, 4) == 12  # mlx-lm drops the incomplete last batch
    assert epochs_to_iters(1.5, 50, 4) == 18
    assert epochs_to_iters(0.1, 30, 1) == 3
    assert epochs_to_iters(1, 50, 4, multiple_of=8) == 16
    with pytest.raises(ConfigError, match="batch_size"):
        epochs_to_iters(1, 3, 4)
    settings = train_settings(epochs=3, batch_size=8)
    assert settings.resolve_iters(100) == 36
    assert train_settings(iters=7).resolve_iters(100) == 7


def test_alpha_to_scale() -> None:
    assert alpha_to_scale(16, 8) == 2.0
    assert alpha_to_scale(32, 16) == 2.0
    settings = train_settings(iters=1, rank=4, alpha=32, dropout=0.05)
    assert settings.scale == 8.0
    assert settings.lora_parameters() == {"rank": 4, "scale": 8.0, "dropout": 0.05}
    keyed = train_settings(iters=1, lora_keys=["self_attn.q_proj"])
    assert keyed.lora_keys == ("self_attn.q_proj",)
    assert keyed.lora_parameters()["keys"] == ["self_attn.q_proj"]


def test_iters_and_epochs_are_exclusive() -> None:
    with pytest.raises(ConfigError, match=r"exactly one of train\.iters and train\.epochs"):
        train_settings(iters=10, epochs=2)
    with pytest.raises(ConfigError, match="exactly one"):
        train_settings()
    with pytest.raises(ConfigError, match="did you mean 'rank'"):
        train_settings(iters=1, rnak=2)
    with pytest.raises(ConfigError, match=r"unknown key 'train\.rnak'"):
        settings_from(TrainSettings, {**section_config("train", {"iters": 1}), "rnak": 2}, "train")


def test_cross_key_checks_name_the_keys() -> None:
    with pytest.raises(ConfigError, match=r"train\.steps_per_eval \(5\) must be a multiple of "
                                          r"train\.steps_per_report \(2\)"):
        train_settings(iters=10, steps_per_eval=5, steps_per_report=2)
    with pytest.raises(ConfigError, match=r"train\.num_layers must be -1 \(all layers\) or at least 1"):
        train_settings(iters=10, num_layers=0)


def test_learning_rate_outside_range_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tubetune.train.settings"):
        train_settings(iters=1, learning_rate=5e-3)
    assert "outside the usual range" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tubetune.train.settings"):
        train_settings(iters=1, learning_rate=1e-4)
    assert caplog.text == ""


@pytest.mark.parametrize("profile", ["cpu-smollm2", "mac16gb-llama3b", "tiny-test"])
def test_profiles_resolve(profile: str) -> None:
    config = load_config(profile=profile)
    settings = settings_from(TrainSettings, config["train"], "train")
    assert settings.profile == profile
    assert 1e-6 <= settings.learning_rate <= 1e-3
    assert settings.mask_prompt


def test_explicit_train_key_overrides_profile() -> None:
    config = load_config(profile="cpu-smollm2", rank=16, epochs=None, iters=5)
    settings = settings_from(TrainSettings, config["train"], "train")
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


def test_model_shape_from_the_model_config() -> None:
    config = json.loads(json.dumps({
        "hidden_size": 3072, "num_hidden_layers": 28, "intermediate_size": 8192,
        "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
    }))
    shape = ModelShape.of(config)
    assert shape.kv_width == 1024 and shape.num_layers == 28


# ------------------------------------------------------------------------------- real training run


def _tiny_settings(**overrides: Any) -> TrainSettings:
    config = load_config(profile="tiny-test", **overrides)
    return settings_from(TrainSettings, config["train"], "train")


@pytest.fixture(scope="module")
def trained(
    base_model_dir: Path, chat_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A real 8-iteration LoRA run (tiny-test profile, val every 2, all checkpoints kept)."""
    from tubetune.train.reproduce import run_layout
    from tubetune.train.runner import run_training

    out = tmp_path_factory.mktemp("train")
    settings = _tiny_settings(
        iters=8, steps_per_eval=2, keep_eval_checkpoints=True, grad_accumulation_steps=2,
        learning_rate=1e-3, seed=3,
    )
    outputs = run_layout(out)
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
    assert on_disk["settings"] == dataclasses.asdict(settings)
    assert on_disk["seed"] == 3
    assert on_disk["dataset"]["train"]["examples"] == 48 and on_disk["dataset"]["valid"]["examples"] == 8
    assert on_disk["tokens_per_second_mean"] > 0 and on_disk["peak_memory_gb"] > 0
    assert on_disk["train_loss_function"] == "target_loss"  # SmolLM2 is a llama: logits at targets only
    # On a CPU device with g++: the fused CPU step (tests/test_cpu_ops.py checks its loss and gradients)
    assert on_disk["cpu_kernels"]["active"] is (shutil.which("g++") is not None), on_disk["cpu_kernels"]
    # On a CPU device freed buffers are reused up to the memory limit (tests/test_buffer_cache.py)
    estimate = on_disk["memory_estimate_gb"]["total"]
    assert on_disk["cpu_buffer_cache_gb"] == (None if on_gpu() else pytest.approx(estimate, abs=0.01))
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

    from tubetune.jsonio import read_jsonl
    from tubetune.train.loss import dataset_loss

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

    from tubetune.train.fuse import fuse

    outputs = trained["outputs"]
    result = fuse(base_model_dir, adapters=outputs.adapters, adapter_config=outputs.adapter_config,
                  fused=tmp_path / "fused")
    assert result.fused_layers == 14  # 7 linear layers x 2 blocks
    fused_dir = tmp_path / "fused"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (fused_dir / name).is_file()
    assert (fused_dir / "tokenizer.json").read_bytes() == (base_model_dir / "tokenizer.json").read_bytes()
    assert json.loads((fused_dir / "config.json").read_text())["model_type"] == "llama"
    tokens = mx.array([[1, 504, 3458, 314, 253, 1345, 30, 2]])
    adapted = mlx_utils.load(str(base_model_dir), adapter_path=str(outputs.adapters.parent))[0]
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
    from tubetune.train.reproduce import run_layout
    from tubetune.train.runner import run_training

    outputs = run_layout(tmp_path)
    with pytest.raises(MemoryLimitError, match=r"lower train\.batch_size"):
        run_training(chat_dataset_dir / "train.jsonl", chat_dataset_dir / "valid.jsonl", base_model_dir,
                     outputs, _tiny_settings(max_memory_gb=0.1))
    assert not outputs.metrics.exists() and not outputs.adapters.exists()


def test_bad_dataset_row_is_a_one_line_error(tmp_path: Path) -> None:
    from tubetune.chat import read_chat_rows
    from tubetune.errors import InputFileError

    path = tmp_path / "train.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = copy.deepcopy(good)
    bad["messages"].reverse()
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InputFileError, match=r"train.jsonl:2: the last message must be the assistant"):
        read_chat_rows(path)
    assert len(read_chat_rows(path, assistant_last=False)) == 2
    assert len(read_chat_rows(path, max_rows=1)) == 1
    path.write_text(json.dumps({"messages": [{"role": "user", "content": 3}]}) + "\n")
    with pytest.raises(InputFileError, match=r"train\.jsonl:1: expected 'messages', a list of at least 2"):
        read_chat_rows(path)
