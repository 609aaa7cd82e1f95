"""Fine-tune a model dir on chat JSONL with mlx-lm's trainer and our :class:`MetricsCallback`.

We call :func:`mlx_lm.tuner.trainer.train` ourselves (``mlx_lm.lora.run`` would replace our
callback). The run: load the model (dequantized on CPU, float32 on CPU unless told otherwise),
convert layers to LoRA / DoRA (or unfreeze them), tokenize the data, check the memory estimate,
train with a warmup + cosine schedule, keep the adapter of the best val loss as
``adapters.safetensors`` and the final one as ``last.safetensors``, then write the loss plot and
``summary.json``.
"""

from __future__ import annotations

from tubetune.mlxrt import BLAS, mx

import contextlib
import ctypes
import importlib.metadata
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlx.optimizers as optim
import numpy as np
from mlx.nn.layers.linear import Linear
from mlx.nn.layers.quantized import QuantizedLinear
from mlx.utils import tree_flatten
from mlx_lm import utils as mlx_utils
from mlx_lm.tuner import trainer as mlx_trainer
from mlx_lm.tuner import utils as tuner_utils
from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
from tqdm import tqdm

from tubetune.errors import ConfigError, InputFileError
from tubetune.evaluate.loss import masked_loss
from tubetune.jsonio import read_json, read_jsonl, write_json
from tubetune.train.callback import (
    EarlyStopping,
    MetricsCallback,
    StopTraining,
    TrainingDiverged,
)
from tubetune.train.memory import (
    ModelShape,
    check_memory,
    estimate_memory,
    memory_limit_gb,
)
from tubetune.train.plot import plot_losses
from tubetune.train.settings import TrainSettings, batches_per_epoch
from tubetune.train.target_loss import supports_target_loss, target_loss, with_targets

logger = logging.getLogger(__name__)
MLX_VERSION = importlib.metadata.version("mlx")

Model = Any  # an mlx.nn.Module (mlx.nn does not type-check as a module namespace)
PAD_TO = 32  # mlx-lm pads each batch to 1 + a multiple of 32 tokens
DTYPES: dict[str, mx.Dtype] = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


@dataclass(frozen=True)
class TrainOutputs:
    """Where a run writes; :meth:`in_dir` gives the standard layout under ``results/train``."""

    adapters: Path
    last: Path
    adapter_config: Path
    metrics: Path
    plot: Path
    summary: Path

    @classmethod
    def in_dir(cls, out_dir: str | Path) -> TrainOutputs:
        root = Path(out_dir)
        return cls(
            adapters=root / "adapters" / "adapters.safetensors",
            last=root / "adapters" / "last.safetensors",
            adapter_config=root / "adapters" / "adapter_config.json",
            metrics=root / "metrics.jsonl",
            plot=root / "loss.png",
            summary=root / "summary.json",
        )

    @property
    def adapter_dir(self) -> Path:
        return self.adapters.parent

    @property
    def checkpoint_dir(self) -> Path:
        return self.adapter_dir / "checkpoints"


# ------------------------------------------------------------------------------------------ BLAS


def _openblas_function(name: str) -> Any:
    """A function of the OpenBLAS loaded globally by tubetune.mlxrt, or None (macOS, reference BLAS)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None


def other_running_processes(samples: int = 5, interval: float = 0.02) -> float:
    """Mean number of running threads of *other* processes (Linux ``/proc``), sampled briefly."""
    own = str(os.getpid())
    counts = []
    for index in range(samples):
        running = 0
        for stat in Path("/proc").glob("[0-9]*/task/*/stat"):
            if stat.parts[2] == own:
                continue
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            running += state == "R"
        counts.append(running)
        if index + 1 < samples:
            time.sleep(interval)
    return sum(counts) / len(counts)


def choose_blas_threads(requested: int, cores: int | None = None, busy: float | None = None) -> int:
    """OpenBLAS threads to train with: ``requested``, minus the cores other running processes occupy.

    OpenBLAS splits every matmul between its threads and waits for the slowest; when another process
    holds one of the cores, each of the thousands of small matmuls of a step stalls for a scheduler
    time slice (measured on 2 cores: 2 threads 21 tokens/s vs 1 thread 93 tokens/s with one other busy
    process, but 128 vs 96 tokens/s on an idle machine).
    """
    cores = cores or os.cpu_count() or 1
    busy = other_running_processes() if busy is None else busy
    free = max(1, cores - round(busy))
    return max(1, min(requested, free))


class BlasThreads:
    """Keeps OpenBLAS at ``requested`` threads minus the cores other processes keep busy.

    :meth:`adjust` is called at the start and every few training steps; without OpenBLAS
    (macOS, reference BLAS) or with ``requested`` None it does nothing.
    """

    def __init__(self, requested: int | None) -> None:
        self._set = _openblas_function("openblas_set_num_threads")
        get = _openblas_function("openblas_get_num_threads")
        self.current: int | None = int(get()) if get is not None else None
        self.requested = requested if self._set is not None else None
        self.changes = 0

    def adjust(self) -> int | None:
        if self.requested is None:
            return self.current
        chosen = choose_blas_threads(self.requested)
        if chosen != self.current:
            if self.current is not None and chosen < self.requested:
                logger.info("OpenBLAS: %d thread(s) instead of %d while other processes keep cores busy",
                            chosen, self.requested)
            elif self.current is not None:
                logger.info("OpenBLAS: back to %d threads", chosen)
            self._set(chosen)
            self.current = chosen
            self.changes += 1
        return self.current


# ------------------------------------------------------------------------------------------ data


def load_chat_split(path: str | Path, *, need_assistant_last: bool) -> list[dict[str, Any]]:
    """Rows of a chat JSONL file, checked: ``messages`` = list of {role, content} ending with assistant."""
    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        messages = row.get("messages")
        if not isinstance(messages, list) or len(messages) < 2:
            raise InputFileError(f"{path}:{number}: expected 'messages', a list of at least 2 chat messages")
        for message in messages:
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise InputFileError(f"{path}:{number}: every message needs a string 'role' and 'content'")
        if need_assistant_last and messages[-1]["role"] != "assistant":
            raise InputFileError(
                f"{path}:{number}: the last message must be the assistant's answer "
                "(train.mask_prompt needs it)"
            )
    return rows


@dataclass(frozen=True)
class TokenStats:
    examples: int
    tokens: int
    target_tokens: int
    longest: int
    truncated: int
    without_targets: int

    def as_dict(self) -> dict[str, int]:
        return {
            "examples": self.examples,
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
            "longest": self.longest,
            "truncated": self.truncated,
            "without_targets": self.without_targets,
        }


def tokenize_split(
    rows: list[dict[str, Any]], tokenizer: Any, *, mask_prompt: bool, max_seq_length: int
) -> tuple[CacheDataset, TokenStats]:
    """mlx-lm's chat dataset over ``rows``, tokenized now (to count tokens and find long examples)."""
    dataset = CacheDataset(ChatDataset(rows, tokenizer, chat_key="messages", mask_prompt=mask_prompt))
    tokens = targets = longest = truncated = without = 0
    for index in range(len(dataset)):
        ids, offset = dataset[index]
        length = len(ids)
        kept = min(length, max_seq_length)
        tokens += kept
        targets += max(0, kept - offset)
        longest = max(longest, length)
        truncated += length > max_seq_length
        without += offset >= kept
    stats = TokenStats(len(dataset), tokens, targets, longest, truncated, without)
    return dataset, stats


def effective_seq_len(longest: int, max_seq_length: int) -> int:
    """The padded length mlx-lm uses for the longest batch (inputs drop the last token)."""
    padded = 1 + PAD_TO * math.ceil(longest / PAD_TO)
    return max(1, min(padded, max_seq_length) - 1)


# ----------------------------------------------------------------------------------------- model


def on_gpu() -> bool:
    return bool(mx.default_device().type == mx.DeviceType.gpu)


def leaves(tree: Any) -> list[tuple[str, Any]]:
    """``tree_flatten`` of a parameter tree as (dotted name, array) pairs."""
    flat: list[tuple[str, Any]] = tree_flatten(tree)  # type: ignore[assignment]
    return flat


def _float_dtype(model: Model) -> mx.Dtype | None:
    for _, value in leaves(model.parameters()):
        if mx.issubdtype(value.dtype, mx.floating):
            dtype: mx.Dtype = value.dtype
            return dtype
    return None


def resolve_dtype(setting: str, current: mx.Dtype | None, gpu: bool) -> mx.Dtype | None:
    """The dtype to train in: ``auto`` is float32 on CPU (fast BLAS path) and the stored dtype on GPU."""
    if setting == "auto":
        return current if gpu else mx.float32
    return DTYPES[setting]


@dataclass
class PreparedModel:
    model: Model
    tokenizer: Any
    config: dict[str, Any]
    dtype: str
    dequantized: bool
    num_layers: int
    total_params: int
    trainable_params: int
    weight_bytes: int


def lora_keys_of(model: Model) -> list[str]:
    """Module paths inside a transformer block that LoRA can adapt (e.g. ``self_attn.q_proj``)."""
    keys: list[str] = []
    for path, module in model.layers[0].named_modules():
        if isinstance(module, Linear | QuantizedLinear):
            keys.append(path)
    return sorted(keys)


def prepare_model(model_dir: str | Path, settings: TrainSettings) -> PreparedModel:
    """Load lazily, dequantize on CPU, cast, freeze and add LoRA / DoRA layers (or unfreeze)."""
    try:
        model, tokenizer, config = mlx_utils.load(  # type: ignore[misc]
            str(model_dir), lazy=True, return_config=True
        )
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise InputFileError(f"{model_dir}: cannot load the base model ({exc})") from exc
    gpu = on_gpu()
    dequantized = False
    if "quantization" in config and not gpu:
        logger.info("base model is quantized: dequantizing it for CPU training (quantized matmuls are slow)")
        model = mlx_utils.dequantize_model(model)
        dequantized = True
    dtype = resolve_dtype(settings.dtype, _float_dtype(model), gpu)
    if dtype is not None and dtype != _float_dtype(model):
        model.set_dtype(dtype)
    layers = len(model.layers)
    num_layers = layers if settings.num_layers == -1 else settings.num_layers
    if num_layers > layers:
        raise ConfigError(
            f"config error: train.num_layers {settings.num_layers} is more than the model's {layers} "
            "layers: use -1 for all"
        )
    mx.random.seed(settings.seed)
    model.freeze()
    if settings.fine_tune_type == "full":
        for layer in model.layers[-num_layers:]:
            layer.unfreeze()
    else:
        if settings.lora_keys is not None:
            known = lora_keys_of(model)
            wrong = sorted(set(settings.lora_keys) - set(known))
            if wrong:
                raise ConfigError(
                    f"config error: train.lora_keys {', '.join(wrong)} not in the model; "
                    f"known: {', '.join(known)}"
                )
        tuner_utils.linear_to_lora_layers(
            model, num_layers, settings.lora_parameters(), use_dora=settings.fine_tune_type == "dora"
        )
    params = leaves(model.parameters())
    trainable = sum(int(v.size) for _, v in leaves(model.trainable_parameters()))
    if trainable == 0:
        raise ConfigError("config error: nothing to train: check train.num_layers and train.lora_keys")
    final_dtype = _float_dtype(model)
    return PreparedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        dtype=str(final_dtype).replace("mlx.core.", ""),
        dequantized=dequantized,
        num_layers=num_layers,
        total_params=sum(int(v.size) for _, v in params),
        trainable_params=trainable,
        weight_bytes=sum(int(v.nbytes) for _, v in params),
    )


def build_learning_rate(settings: TrainSettings, updates: int) -> tuple[float | Callable[[Any], Any], int]:
    """Learning rate or schedule (mlx-lm's ``build_schedule``) over ``updates`` optimizer steps."""
    lr = settings.learning_rate
    warmup = round(settings.warmup_ratio * updates) if updates > 1 else 0
    decay_steps = max(1, updates - warmup)
    end = lr * settings.min_lr_ratio
    if settings.lr_schedule == "cosine":
        schedule = {"name": "cosine_decay", "arguments": [lr, decay_steps, end], "warmup": warmup}
    elif settings.lr_schedule == "linear":
        schedule = {"name": "linear_schedule", "arguments": [lr, end, decay_steps], "warmup": warmup}
    elif warmup:
        schedule = {"name": "linear_schedule", "arguments": [lr, lr, 1], "warmup": warmup}
    else:
        return lr, 0
    built: Callable[[Any], Any] = tuner_utils.build_schedule(schedule)
    return built, warmup


def build_optimizer(settings: TrainSettings, learning_rate: float | Callable[[Any], Any]) -> optim.Optimizer:
    if settings.optimizer == "adamw":
        return optim.AdamW(learning_rate=learning_rate, weight_decay=settings.weight_decay)
    return optim.Adam(learning_rate=learning_rate)


def trainable_weights(model: Model) -> dict[str, mx.array]:
    return dict(leaves(model.trainable_parameters()))


def save_weights(model: Model, path: Path) -> None:
    """Save the trainable parameters atomically (write a temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")
    mx.save_safetensors(str(tmp), trainable_weights(model))
    os.replace(tmp, path)


def adapter_config(settings: TrainSettings, prepared: PreparedModel, model_dir: str | Path) -> dict[str, Any]:
    """``adapter_config.json`` as mlx-lm's ``load_adapters`` reads it, plus our resolved settings."""
    return {
        "fine_tune_type": settings.fine_tune_type,
        "num_layers": prepared.num_layers,
        "lora_parameters": settings.lora_parameters(),
        "model": str(model_dir),
        "train_settings": settings.as_dict(),
    }


def _progress_iterator(progress: Any, blas: BlasThreads, every: int = 5) -> Callable[..., Iterator[Any]]:
    """mlx-lm's ``iterate_batches`` that also advances the progress bar per training batch and
    re-checks the OpenBLAS thread count every ``every`` batches."""

    def iterate(
        dataset: Any,
        batch_size: int,
        max_seq_length: int,
        loop: bool = False,
        seed: int | None = None,
        comm_group: Any = None,
    ) -> Iterator[Any]:
        batches = mlx_trainer.iterate_batches(  # type: ignore[no-untyped-call]
            dataset=dataset, batch_size=batch_size, max_seq_length=max_seq_length,
            loop=loop, seed=seed, comm_group=comm_group,
        )
        for count, batch in enumerate(batches, start=1):
            yield batch
            if loop:
                progress.update(1)
                if count % every == 0:
                    blas.adjust()

    return iterate


# ------------------------------------------------------------------------------------------ run


def _check_split_size(name: str, size: int, batch_size: int) -> None:
    if size < batch_size:
        raise InputFileError(
            f"{name} has {size} example(s), fewer than train.batch_size {batch_size}: "
            "lower train.batch_size or add data"
        )


def run_training(
    train_path: str | Path,
    valid_path: str | Path,
    model_dir: str | Path,
    outputs: TrainOutputs,
    settings: TrainSettings,
    *,
    blas_threads: int | None = None,
) -> dict[str, Any]:
    """Train, keep the best adapter, write metrics, plot and summary; return the summary.

    ``blas_threads``: the OpenBLAS threads wanted (the rule's threads), reduced when other processes
    keep cores busy; None leaves OpenBLAS as loaded.
    """
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    blas = BlasThreads(blas_threads)
    threads = blas.adjust()
    logger.info("BLAS: %s (%s threads); device: %s; mlx %s", BLAS, threads or "n/a", mx.default_device(),
                MLX_VERSION)
    np.random.seed(settings.seed)
    mx.random.seed(settings.seed)

    train_rows = load_chat_split(train_path, need_assistant_last=settings.mask_prompt)
    valid_rows = load_chat_split(valid_path, need_assistant_last=settings.mask_prompt)
    _check_split_size(str(train_path), len(train_rows), settings.batch_size)
    _check_split_size(str(valid_path), len(valid_rows), settings.batch_size)

    prepared = prepare_model(model_dir, settings)
    model = prepared.model
    mask, max_len, tokenizer = settings.mask_prompt, settings.max_seq_length, prepared.tokenizer
    train_set, train_stats = tokenize_split(train_rows, tokenizer, mask_prompt=mask, max_seq_length=max_len)
    valid_set, valid_stats = tokenize_split(valid_rows, tokenizer, mask_prompt=mask, max_seq_length=max_len)
    for name, stats in (("train", train_stats), ("valid", valid_stats)):
        logger.info("%s: %d examples, %d tokens (%d trained on), longest %d", name, stats.examples,
                    stats.tokens, stats.target_tokens, stats.longest)
        if stats.truncated:
            logger.warning("%s: %d example(s) longer than train.max_seq_length %d are truncated", name,
                           stats.truncated, settings.max_seq_length)
        if stats.without_targets:
            logger.warning("%s: %d example(s) have no answer tokens left after truncation: raise "
                           "train.max_seq_length", name, stats.without_targets)

    seq_len = effective_seq_len(max(train_stats.longest, valid_stats.longest), settings.max_seq_length)
    estimate = estimate_memory(
        ModelShape.from_config(prepared.config),
        weights_bytes=prepared.weight_bytes,
        trainable_params=prepared.trainable_params,
        activation_bytes=4 if prepared.dtype == "float32" else 2,
        batch_size=settings.batch_size,
        seq_len=seq_len,
        trained_layers=prepared.num_layers,
        grad_checkpoint=settings.grad_checkpoint,
        grad_accumulation_steps=settings.grad_accumulation_steps,
    )
    limit = memory_limit_gb(settings.max_memory_gb)
    logger.info("memory estimate: %s for batch %d x %d tokens x %d layers (limit %s GB)", estimate.describe(),
                settings.batch_size, seq_len, prepared.num_layers, f"{limit:.1f}" if limit else "none")
    check_memory(estimate, limit, grad_checkpoint=settings.grad_checkpoint)

    per_epoch = batches_per_epoch(train_stats.examples, settings.batch_size)
    iters = settings.resolve_iters(train_stats.examples)
    updates = max(1, iters // settings.grad_accumulation_steps)
    learning_rate, warmup = build_learning_rate(settings, updates)
    optimizer = build_optimizer(settings, learning_rate)
    logger.info(
        "%s fine-tune: %d of %d layers, %.3fM of %.1fM parameters trainable (%s), rank %d, scale %.3g; "
        "%d iterations (%.2f epochs of %d batches), %d optimizer updates, %d warmup",
        settings.fine_tune_type, prepared.num_layers, len(model.layers), prepared.trainable_params / 1e6,
        prepared.total_params / 1e6, prepared.dtype, settings.rank, settings.scale, iters,
        iters / max(1, per_epoch), per_epoch, updates, warmup,
    )
    mx.eval(model.parameters())

    for stale in (outputs.adapters, outputs.last):
        stale.unlink(missing_ok=True)
    if outputs.checkpoint_dir.exists():
        shutil.rmtree(outputs.checkpoint_dir)
    outputs.adapter_dir.mkdir(parents=True, exist_ok=True)
    write_json(outputs.adapter_config, adapter_config(settings, prepared, model_dir))

    def keep_checkpoint(iteration: int) -> None:
        if settings.keep_eval_checkpoints:
            save_weights(model, outputs.checkpoint_dir / f"{iteration:07d}_adapters.safetensors")

    def validate() -> float:
        loss = float(mlx_trainer.evaluate(
            model=model,
            dataset=valid_set,
            batch_size=settings.batch_size,
            num_batches=settings.val_batches,
            max_seq_length=settings.max_seq_length,
            loss=masked_loss,
        ))
        model.train()
        return loss

    progress = tqdm(total=iters, desc="train", unit="it", leave=False, disable=None)
    callback = MetricsCallback(
        metrics_path=outputs.metrics,
        batches_per_epoch=per_epoch,
        stopper=EarlyStopping(settings.early_stopping_patience, settings.early_stopping_min_delta),
        final_iteration=iters,
        save_best=lambda iteration: save_weights(model, outputs.adapters),
        evaluate=validate,
        steps_per_eval=settings.steps_per_eval,
        on_eval=keep_checkpoint,
        learning_rate=lambda: float(optimizer.learning_rate.item()),
        peak_memory_gb=lambda: mx.get_peak_memory() / 1e9,
        progress=progress,
        base_learning_rate=settings.learning_rate,
    )
    # One iteration more than wanted: mlx-lm validates *before* the step of iteration it, so its val
    # report of the last planned step comes at it = iters + 1, and our callback stops right there.
    # mlx-lm validates only then and at the start; the callback does the validations in between.
    args = mlx_trainer.TrainingArgs(
        batch_size=settings.batch_size,
        iters=iters + 1,
        val_batches=settings.val_batches,
        steps_per_report=settings.steps_per_report,
        steps_per_eval=iters + 2,
        steps_per_save=iters + 2,
        max_seq_length=settings.max_seq_length,
        adapter_file=str(outputs.last),
        grad_checkpoint=settings.grad_checkpoint,
        grad_accumulation_steps=settings.grad_accumulation_steps,
    )
    # Logits only at scored positions when the model allows it: the same loss value, less work.
    iterate_batches = _progress_iterator(progress, blas)
    train_loss: Callable[..., tuple[mx.array, mx.array]] = masked_loss
    if supports_target_loss(model):
        iterate_batches, train_loss = with_targets(iterate_batches), target_loss
    logger.info("loss: %s", "logits at scored positions only (target_loss)" if train_loss is target_loss
                else "masked_loss over all positions")
    mx.reset_peak_memory()
    stop: StopTraining | None = None
    diverged: TrainingDiverged | None = None
    train_started = time.perf_counter()
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            # mlx-lm's rich console table goes nowhere: the log and metrics.jsonl carry the numbers.
            mlx_trainer.train(
                model=model,
                optimizer=optimizer,
                train_dataset=train_set,
                val_dataset=valid_set,
                args=args,
                loss=train_loss,
                iterate_batches=iterate_batches,
                training_callback=callback,
            )
    except StopTraining as signal:
        stop = signal
    except TrainingDiverged as exc:
        if exc.iteration == 0:  # the data gives no loss: nothing was trained, nothing to keep
            raise
        # The run ends here, but what it learned before is kept: the best adapter (by a finite val
        # loss) is on disk, the summary says the run diverged, and a sweep ranks it with the others.
        logger.error("%s", exc)
        diverged = exc
    finally:
        progress.close()
    train_seconds = time.perf_counter() - train_started
    save_weights(model, outputs.last)
    if not outputs.adapters.exists():  # only if no val report ever ran
        shutil.copyfile(outputs.last, outputs.adapters)
    stopper = callback.stopper
    iterations_run = stop.iteration if stop is not None else diverged.iteration if diverged else iters
    early_stopped = stop is not None and stop.reason == "early_stopped"
    if stopper.best_iteration == 0:
        logger.warning("the best val loss is the untrained model's (iteration 0): the adapter is a no-op; "
                       "check train.learning_rate and the data")
    model_name = f"{prepared.config.get('model_type', 'model')} {prepared.total_params / 1e6:.0f}M"
    title = f"Fine-tuning loss ({settings.fine_tune_type}, {model_name})"
    best = stopper.best_iteration
    plot_losses(callback.rows, outputs.plot, best_iteration=best, batches_per_epoch=per_epoch, title=title)
    val_rows = [row for row in callback.rows if row["kind"] == "val"]
    summary = {
        "settings": settings.as_dict(),
        "resolved": {
            "iters": iters,
            "batches_per_epoch": per_epoch,
            "epochs": round(iters / max(1, per_epoch), 4),
            "optimizer_updates": updates,
            "warmup_updates": warmup,
            "lora_scale": settings.scale if settings.fine_tune_type != "full" else None,
            "num_layers": prepared.num_layers,
            "model_layers": len(model.layers),
            "dtype": prepared.dtype,
            "dequantized": prepared.dequantized,
            "effective_seq_len": seq_len,
        },
        "best_iteration": stopper.best_iteration,
        "best_epoch": callback.epoch(stopper.best_iteration) if stopper.best_iteration is not None else None,
        "best_val_loss": stopper.best_loss if math.isfinite(stopper.best_loss) else None,
        "initial_val_loss": val_rows[0]["val_loss"] if val_rows else None,
        "last_val_loss": val_rows[-1]["val_loss"] if val_rows else None,
        "final_train_loss": callback.final_train_loss,
        "iterations_run": iterations_run,
        "early_stopped": early_stopped,
        "diverged": {"iteration": diverged.iteration, "message": str(diverged)} if diverged else None,
        "tokens_per_second_mean": callback.mean_tokens_per_second,
        "train_loss_function": train_loss.__name__,
        "tokens_counted": "answer tokens (prompt masked)" if settings.mask_prompt else "all but padding",
        "trained_tokens": int(callback.train_tokens),
        "peak_memory_gb": round(mx.get_peak_memory() / 1e9, 3),
        "memory_estimate_gb": estimate.as_dict(),
        "memory_limit_gb": round(limit, 2) if limit else None,
        "trainable_parameters": prepared.trainable_params,
        "total_parameters": prepared.total_params,
        "blas": BLAS,
        "blas_threads": {"requested": blas_threads, "start": threads, "end": blas.current,
                         "changes": blas.changes},
        "device": str(mx.default_device()),
        "platform": platform.platform(),
        "mlx_version": MLX_VERSION,
        "seed": settings.seed,
        "dataset": {"train": train_stats.as_dict(), "valid": valid_stats.as_dict()},
        "train_seconds": round(train_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "started_at": started_at,
        "ended_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(outputs.summary, summary)
    logger.info(
        "done: %d iterations%s, best val loss %.4f at iteration %s (initial %.4f), %.0f tokens/s, "
        "peak memory %.2f GB",
        iterations_run, " (early stopped)" if early_stopped else " (diverged)" if diverged else "",
        stopper.best_loss,
        stopper.best_iteration, summary["initial_val_loss"] or math.nan,
        summary["tokens_per_second_mean"] or math.nan, summary["peak_memory_gb"],
    )
    return summary


def train_from_config(
    train_path: str | Path,
    valid_path: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    train_config: dict[str, Any],
    threads: int | None = None,
) -> dict[str, Any]:
    """Entry point of the Snakemake rule: ``train_config`` is the resolved ``config["train"]``."""
    return run_training(train_path, valid_path, model_dir, TrainOutputs.in_dir(out_dir),
                        TrainSettings.from_config(train_config), blas_threads=threads)


def read_summary(out_dir: str | Path) -> dict[str, Any]:
    data: dict[str, Any] = read_json(TrainOutputs.in_dir(out_dir).summary)
    return data
