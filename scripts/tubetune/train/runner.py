"""Fine-tune a model dir on chat JSONL with mlx-lm's trainer: the rule ``train_run``.

The run is five steps: :func:`load_splits` (the checked chat rows), :func:`prepare_model` (loaded,
dequantized on CPU, float32 on CPU unless told otherwise, layers converted to LoRA / DoRA or
unfrozen), :func:`plan_training` (tokenized splits, memory check, iterations and learning-rate
schedule), :func:`fit` (mlx-lm's ``train()`` with the callbacks of :mod:`tubetune.train.callback`:
metrics rows, the adapter of the best val loss as ``adapters.safetensors``, early stopping, the
divergence guard; the final adapter as ``last.safetensors``) and :func:`summarize` (loss plot and
``summary.json``). :func:`mlx_lm.tuner.trainer.train` is called directly (``mlx_lm.lora.run`` would
replace the callbacks).
"""

from __future__ import annotations

from tubetune.mlxrt import BLAS, mx

import contextlib
import dataclasses
import importlib.metadata
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
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

from tubetune.chat import read_chat_rows
from tubetune.errors import ConfigError, InputFileError
from tubetune.jsonio import write_json
from tubetune.settings import settings_from
from tubetune.train.adapter import adapter_config
from tubetune.train.blas import BlasThreads
from tubetune.train.buffer_cache import cache_limit_gb, cpu_buffer_cache
from tubetune.train.callback import (
    BestAdapter,
    CallbackChain,
    DivergenceGuard,
    MetricsWriter,
    TrainingDiverged,
)
from tubetune.train.cpu_ops import composed_ops, cross_entropy, with_cross_entropy
from tubetune.train.jit import prepare_jit
from tubetune.train.loss import masked_loss
from tubetune.train.memory import (
    GB,
    MemoryEstimate,
    ModelShape,
    check_memory,
    estimate_memory,
    memory_limit_gb,
)
from tubetune.train.parallel import (
    Processes,
    Workers,
    WorkerSpec,
    check_default_group,
    choose_processes,
    global_token_mean,
    join_group,
)
from tubetune.train.plot import plot_losses
from tubetune.train.settings import TrainSettings, batches_per_epoch
from tubetune.train.target_loss import supports_target_loss, target_loss, with_targets

logger = logging.getLogger(__name__)
MLX_VERSION = importlib.metadata.version("mlx")

Model = Any  # an mlx.nn.Module (mlx.nn does not type-check as a module namespace)
Rows = list[dict[str, Any]]
PAD_TO = 32  # mlx-lm pads each batch to 1 + a multiple of 32 tokens
WORKERS_DIR = ".workers"  # next to a run's outputs: the scratch directory of its worker processes
DTYPES: dict[str, mx.Dtype] = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


@dataclass(frozen=True)
class TrainOutputs:
    """The files a run writes, each named by the rule (``checkpoints/`` goes next to ``adapters``)."""

    adapters: Path
    adapter_config: Path
    last: Path
    metrics: Path
    plot: Path
    summary: Path

    @property
    def checkpoint_dir(self) -> Path:
        return self.adapters.parent / "checkpoints"


def train_run(
    train: str | Path,
    valid: str | Path,
    base: str | Path,
    *,
    adapters: str | Path,
    adapter_config: str | Path,
    last: str | Path,
    metrics: str | Path,
    plot: str | Path,
    summary: str | Path,
    settings: Mapping[str, Any],
    threads: int | None = None,
) -> dict[str, Any]:
    """The rule ``train_run``: ``settings`` is the run's resolved ``train`` section; returns the summary."""
    outputs = TrainOutputs(
        adapters=Path(adapters), adapter_config=Path(adapter_config), last=Path(last),
        metrics=Path(metrics), plot=Path(plot), summary=Path(summary),
    )
    return run_training(train, valid, base, outputs, settings_from(TrainSettings, settings, "train"),
                        blas_threads=threads)


def run_training(
    train_path: str | Path,
    valid_path: str | Path,
    model_dir: str | Path,
    outputs: TrainOutputs,
    settings: TrainSettings,
    *,
    blas_threads: int | None = None,
    worker: WorkerSpec | None = None,
) -> dict[str, Any]:
    """Train, keep the best adapter, write metrics, plot and summary; return the summary.

    ``blas_threads``: the threads of the run (the rule's threads): on a CPU device they are shared by
    the training processes (:mod:`tubetune.train.parallel`), and OpenBLAS runs with each process's
    share, reduced when other processes keep cores busy; None: one process, OpenBLAS as loaded.
    ``worker``: set in a worker process (rank 1..) of a data-parallel run, None in the rule's process.
    """
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    np.random.seed(settings.seed)
    mx.random.seed(settings.seed)
    train_rows, valid_rows = load_splits(train_path, valid_path, settings)
    prepared = prepare_model(model_dir, settings)
    given = None if worker is None else Processes(worker.processes, worker.blas_threads, "rank 0's choice",
                                                  blas_threads)
    plan = plan_training(train_rows, valid_rows, prepared, settings, threads=blas_threads, processes=given)
    blas = BlasThreads(plan.processes.blas_threads)
    logger.info("BLAS: %s (%s threads); device: %s; mlx %s", BLAS, blas.adjust() or "n/a",
                mx.default_device(), MLX_VERSION)
    with _process_group(plan.processes, worker, outputs, lambda rank: WorkerSpec(
        train=str(train_path), valid=str(valid_path), base=str(model_dir),
        settings=dataclasses.asdict(settings), rank=rank, processes=plan.processes.count,
        blas_threads=plan.processes.blas_threads,
        outputs=str(outputs.summary.parent / WORKERS_DIR / f"rank{rank}"),
        ready=str(Workers.ready_path(outputs.summary.parent / WORKERS_DIR, rank)),
    )):
        _start_outputs(outputs, adapter_config(settings, prepared.num_layers, model_dir))
        fitted = fit(prepared, plan, settings, outputs, blas)
        summary = summarize(settings, prepared, plan, fitted, outputs)
        ended_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        summary.update(_environment(blas), total_seconds=round(time.perf_counter() - started, 2),
                       started_at=started_at, ended_at=ended_at)
        write_json(outputs.summary, summary)
    logger.info(
        "done: %d iterations%s, best val loss %.4f at iteration %s (initial %.4f), %.0f tokens/s, "
        "peak memory %.2f GB", fitted.iterations_run,
        " (early stopped)" if summary["early_stopped"] else " (diverged)" if fitted.diverged else "",
        fitted.best.best_loss, fitted.best.best_iteration, summary["initial_val_loss"] or math.nan,
        summary["tokens_per_second_mean"] or math.nan, summary["peak_memory_gb"],
    )
    return summary


@contextlib.contextmanager
def _process_group(processes: Processes, worker: WorkerSpec | None, outputs: TrainOutputs,
                   spec: Callable[[int], WorkerSpec]) -> Iterator[None]:
    """Rank 0 of several processes: start the workers (their scratch directory next to the outputs);
    a worker: join the group rank 0 formed; one process: nothing."""
    if worker is not None:
        join_group(processes.count, Path(worker.ready))
        yield
    elif processes.count > 1:
        with Workers(spec, processes, outputs.summary.parent / WORKERS_DIR):
            yield
    else:
        check_default_group(1)
        yield


# ------------------------------------------------------------------------------------ 1. splits


def load_splits(
    train_path: str | Path, valid_path: str | Path, settings: TrainSettings
) -> tuple[Rows, Rows]:
    """The checked chat rows of the train and valid splits (the answer last when the prompt is masked)."""
    splits = []
    for path in (train_path, valid_path):
        rows = read_chat_rows(path, assistant_last=settings.mask_prompt)
        if len(rows) < settings.batch_size:
            raise InputFileError(
                f"{path} has {len(rows)} example(s), fewer than train.batch_size {settings.batch_size}: "
                "lower train.batch_size or add data"
            )
        splits.append(rows)
    return splits[0], splits[1]


# ------------------------------------------------------------------------------------- 2. model


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


def lora_keys_of(model: Model) -> list[str]:
    """Module paths inside a transformer block that LoRA can adapt (e.g. ``self_attn.q_proj``)."""
    keys: list[str] = []
    for path, module in model.layers[0].named_modules():
        if isinstance(module, Linear | QuantizedLinear):
            keys.append(path)
    return sorted(keys)


def _load_base(model_dir: str | Path, settings: TrainSettings) -> tuple[Model, Any, dict[str, Any], bool]:
    """Load lazily, dequantize on CPU and cast to the training dtype; also says if it dequantized."""
    try:
        model, tokenizer, config = mlx_utils.load(  # type: ignore[misc]
            str(model_dir), lazy=True, return_config=True
        )
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise InputFileError(f"{model_dir}: cannot load the base model ({exc})") from exc
    gpu = on_gpu()
    dequantized = "quantization" in config and not gpu
    if dequantized:
        logger.info("base model is quantized: dequantizing it for CPU training (quantized matmuls are slow)")
        model = mlx_utils.dequantize_model(model)
    dtype = resolve_dtype(settings.dtype, _float_dtype(model), gpu)
    if dtype is not None and dtype != _float_dtype(model):
        model.set_dtype(dtype)
    return model, tokenizer, config, dequantized


def _make_trainable(model: Model, num_layers: int, settings: TrainSettings) -> None:
    """Freeze the model, then add LoRA / DoRA layers to the last ``num_layers`` blocks (or unfreeze them)."""
    model.freeze()
    if settings.fine_tune_type == "full":
        for layer in model.layers[-num_layers:]:
            layer.unfreeze()
        return
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


def prepare_model(model_dir: str | Path, settings: TrainSettings) -> PreparedModel:
    """The base model, cast, frozen and with its trained layers (see :func:`_make_trainable`)."""
    model, tokenizer, config, dequantized = _load_base(model_dir, settings)
    layers = len(model.layers)
    num_layers = layers if settings.num_layers == -1 else settings.num_layers
    if num_layers > layers:
        raise ConfigError(
            f"config error: train.num_layers {settings.num_layers} is more than the model's {layers} "
            "layers: use -1 for all"
        )
    mx.random.seed(settings.seed)
    _make_trainable(model, num_layers, settings)
    params = leaves(model.parameters())
    trainable = sum(int(v.size) for _, v in leaves(model.trainable_parameters()))
    if trainable == 0:
        raise ConfigError("config error: nothing to train: check train.num_layers and train.lora_keys")
    return PreparedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        dtype=str(_float_dtype(model)).replace("mlx.core.", ""),
        dequantized=dequantized,
        num_layers=num_layers,
        total_params=sum(int(v.size) for _, v in params),
        trainable_params=trainable,
        weight_bytes=sum(int(v.nbytes) for _, v in params),
    )


# -------------------------------------------------------------------------------------- 3. plan


@dataclass(frozen=True)
class TokenStats:
    examples: int
    tokens: int
    target_tokens: int
    longest: int
    truncated: int
    without_targets: int


def tokenize_split(
    rows: Rows, tokenizer: Any, *, mask_prompt: bool, max_seq_length: int
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
    return dataset, TokenStats(len(dataset), tokens, targets, longest, truncated, without)


def _tokenize_logged(
    name: str, rows: Rows, tokenizer: Any, settings: TrainSettings
) -> tuple[CacheDataset, TokenStats]:
    dataset, stats = tokenize_split(rows, tokenizer, mask_prompt=settings.mask_prompt,
                                    max_seq_length=settings.max_seq_length)
    logger.info("%s: %d examples, %d tokens (%d trained on), longest %d", name, stats.examples,
                stats.tokens, stats.target_tokens, stats.longest)
    if stats.truncated:
        logger.warning("%s: %d example(s) longer than train.max_seq_length %d are truncated", name,
                       stats.truncated, settings.max_seq_length)
    if stats.without_targets:
        logger.warning("%s: %d example(s) have no answer tokens left after truncation: raise "
                       "train.max_seq_length", name, stats.without_targets)
    return dataset, stats


def effective_seq_len(longest: int, max_seq_length: int) -> int:
    """The padded length mlx-lm uses for the longest batch (inputs drop the last token)."""
    padded = 1 + PAD_TO * math.ceil(longest / PAD_TO)
    return max(1, min(padded, max_seq_length) - 1)


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


@dataclass(frozen=True)
class TrainingPlan:
    train_set: CacheDataset
    valid_set: CacheDataset
    train_stats: TokenStats
    valid_stats: TokenStats
    seq_len: int
    processes: Processes
    memory: MemoryEstimate
    memory_limit_gb: float | None
    iters: int
    batches_per_epoch: int
    updates: int
    warmup: int
    learning_rate: float | Callable[[Any], Any]


def _estimate(prepared: PreparedModel, settings: TrainSettings, seq_len: int,
              processes: int) -> MemoryEstimate:
    """The memory estimate of one of ``processes`` training processes (each its part of the batch)."""
    return estimate_memory(
        ModelShape.of(prepared.config),
        weights_bytes=prepared.weight_bytes,
        trainable_params=prepared.trainable_params,
        activation_bytes=4 if prepared.dtype == "float32" else 2,
        batch_size=settings.batch_size // processes,
        seq_len=seq_len,
        trained_layers=prepared.num_layers,
        grad_checkpoint=settings.grad_checkpoint,
        grad_accumulation_steps=settings.grad_accumulation_steps,
    )


def _memory(
    prepared: PreparedModel, settings: TrainSettings, seq_len: int, *, threads: int | None,
    processes: Processes | None,
) -> tuple[Processes, MemoryEstimate, float | None]:
    """The training processes (``processes`` when given, else chosen), the memory estimate of each and
    the limit; raises MemoryLimitError when they need more than the limit."""
    limit = memory_limit_gb(settings.max_memory_gb)
    if processes is None:
        processes = choose_processes(
            settings.cpu_processes, threads=threads, batch_size=settings.batch_size, gpu=on_gpu(),
            fits=lambda n: limit is None or n * _estimate(prepared, settings, seq_len, n).total <= limit * GB,
        )
    estimate = _estimate(prepared, settings, seq_len, processes.count)
    each = f" per process ({processes.count})" if processes.count > 1 else ""
    logger.info("memory estimate: %s%s for batch %d x %d tokens x %d layers (limit %s GB)",
                estimate.describe(), each, settings.batch_size, seq_len, prepared.num_layers,
                f"{limit:.1f}" if limit else "none")
    check_memory(estimate, limit, grad_checkpoint=settings.grad_checkpoint, processes=processes.count)
    return processes, estimate, limit


def plan_training(train_rows: Rows, valid_rows: Rows, prepared: PreparedModel, settings: TrainSettings, *,
                  threads: int | None = None, processes: Processes | None = None) -> TrainingPlan:
    """Tokenize the splits, choose the training processes for ``threads`` cores (unless ``processes``
    is given), check the memory estimate, count iterations and optimizer updates."""
    train_set, train_stats = _tokenize_logged("train", train_rows, prepared.tokenizer, settings)
    valid_set, valid_stats = _tokenize_logged("valid", valid_rows, prepared.tokenizer, settings)
    seq_len = effective_seq_len(max(train_stats.longest, valid_stats.longest), settings.max_seq_length)
    chosen, estimate, limit = _memory(prepared, settings, seq_len, threads=threads, processes=processes)
    per_epoch = batches_per_epoch(train_stats.examples, settings.batch_size)
    iters = settings.resolve_iters(train_stats.examples)
    updates = max(1, iters // settings.grad_accumulation_steps)
    learning_rate, warmup = build_learning_rate(settings, updates)
    logger.info(
        "%s fine-tune: %d of %d layers, %.3fM of %.1fM parameters trainable (%s), rank %d, scale %.3g; "
        "%d iterations (%.2f epochs of %d batches), %d optimizer updates, %d warmup",
        settings.fine_tune_type, prepared.num_layers, len(prepared.model.layers),
        prepared.trainable_params / 1e6, prepared.total_params / 1e6, prepared.dtype, settings.rank,
        settings.scale, iters, iters / max(1, per_epoch), per_epoch, updates, warmup,
    )
    return TrainingPlan(train_set, valid_set, train_stats, valid_stats, seq_len, chosen, estimate, limit,
                        iters, per_epoch, updates, warmup, learning_rate)


# --------------------------------------------------------------------------------------- 4. fit


def build_optimizer(settings: TrainSettings, learning_rate: float | Callable[[Any], Any]) -> optim.Optimizer:
    if settings.optimizer == "adamw":
        return optim.AdamW(learning_rate=learning_rate, weight_decay=settings.weight_decay)
    return optim.Adam(learning_rate=learning_rate)


def save_weights(model: Model, path: Path) -> None:
    """Save the trainable parameters atomically (write a temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")
    mx.save_safetensors(str(tmp), dict(leaves(model.trainable_parameters())))
    os.replace(tmp, path)


def _start_outputs(outputs: TrainOutputs, config: dict[str, Any]) -> None:
    """Remove the adapters of an earlier run and write ``adapter_config.json``."""
    for stale in (outputs.adapters, outputs.last):
        stale.unlink(missing_ok=True)
    if outputs.checkpoint_dir.exists():
        shutil.rmtree(outputs.checkpoint_dir)
    write_json(outputs.adapter_config, config)


def batch_stream(
    progress: Any, blas: BlasThreads, *, steps: int, validate: Callable[[int], None],
    stop: Callable[[], bool], every: int = 5,
) -> Callable[..., Iterator[Any]]:
    """mlx-lm's ``iterate_batches`` for ``train()``, with hooks in the training loop (``loop=True``).

    ``validate(0)`` runs once the first batch is drawn and ``validate(steps)`` once the batch after the
    last step is drawn, the points of the random batch order where mlx-lm validates. After each step
    it advances the progress bar and every ``every`` steps re-checks the OpenBLAS threads. It yields
    at most ``steps`` batches, none once ``stop()`` is true: ``train()`` then ends as after its last
    iteration.
    """

    def iterate(dataset: Any, batch_size: int, max_seq_length: int, loop: bool = False,
                seed: int | None = None, comm_group: Any = None) -> Iterator[Any]:
        batches = mlx_trainer.iterate_batches(  # type: ignore[no-untyped-call]
            dataset=dataset, batch_size=batch_size, max_seq_length=max_seq_length,
            loop=loop, seed=seed, comm_group=comm_group,
        )
        for done, batch in enumerate(batches):
            if not loop:
                yield batch
                continue
            if done == 0:
                validate(0)
            else:
                progress.update(1)
                if done % every == 0:
                    blas.adjust()
            if done == steps:
                validate(steps)
                return
            if stop():
                return
            yield batch

    return iterate


def _validation(model: Model, valid_set: CacheDataset, settings: TrainSettings) -> Callable[[], float]:
    """The val loss of the current weights: masked loss over ``train.val_batches`` batches."""

    def validate() -> float:
        loss = float(mlx_trainer.evaluate(
            model=model, dataset=valid_set, batch_size=settings.batch_size, num_batches=settings.val_batches,
            max_seq_length=settings.max_seq_length, loss=masked_loss,
        ))
        model.train()
        return loss

    return validate


@dataclass
class Fitted:
    """What :func:`fit` leaves for the summary."""

    metrics: MetricsWriter
    best: BestAdapter
    iterations_run: int
    diverged: TrainingDiverged | None
    train_seconds: float
    loss_function: str
    cpu_kernels: dict[str, Any]
    buffer_cache_gb: float | None


def cpu_kernels(settings: TrainSettings) -> dict[str, Any]:
    """Whether the step uses :mod:`tubetune.train.cpu_ops` with :mod:`tubetune.train.jit`'s compiler.

    On a CPU device with ``train.cpu_fused``: the compiler wrapper and kernel cache are set up here
    (before the first compiled step). ``{"active": bool, "reason": str, ...}`` for summary.json.
    """
    if on_gpu():
        return {"active": False, "reason": "GPU device: mlx-lm's own kernels"}
    if not settings.cpu_fused:
        return {"active": False, "reason": "train.cpu_fused is false"}
    setup = prepare_jit()
    if setup.active:
        logger.info("CPU step: SwiGLU, attention and cross-entropy as fused kernels (%s)", setup.reason)
    else:
        logger.warning("CPU step: mlx-lm's own ops, unfused (%s)", setup.reason)
    return setup.record()


def _callbacks(model: Model, optimizer: optim.Optimizer, plan: TrainingPlan, settings: TrainSettings,
               outputs: TrainOutputs, progress: Any) -> tuple[CallbackChain, MetricsWriter, BestAdapter]:
    """The callbacks in report order: best adapter, metrics row, divergence guard."""
    best = BestAdapter(
        save=lambda path: save_weights(model, path), best_path=outputs.adapters,
        patience=settings.early_stopping_patience, min_delta=settings.early_stopping_min_delta,
        final_iteration=plan.iters,
        checkpoint_dir=outputs.checkpoint_dir if settings.keep_eval_checkpoints else None,
    )
    learning_rate = lambda: float(optimizer.learning_rate.item())  # noqa: E731
    metrics = MetricsWriter(
        path=outputs.metrics, batches_per_epoch=plan.batches_per_epoch, best=best,
        learning_rate=learning_rate, peak_memory_gb=lambda: mx.get_peak_memory() / 1e9, progress=progress,
    )
    guard = DivergenceGuard(best=best, base_learning_rate=settings.learning_rate, learning_rate=learning_rate)
    chain = CallbackChain([best, metrics, guard], evaluate=_validation(model, plan.valid_set, settings),
                          steps_per_eval=settings.steps_per_eval, final_iteration=plan.iters)
    return chain, metrics, best


def _train(model: Model, optimizer: optim.Optimizer, plan: TrainingPlan, settings: TrainSettings,
           outputs: TrainOutputs, loss: Callable[..., Any], iterate: Callable[..., Iterator[Any]],
           chain: CallbackChain, buffer_cache_gb: float | None) -> None:
    """mlx-lm's ``train()`` without a validation set (the callbacks validate) and its console table.

    ``buffer_cache_gb``: the CPU buffer cache of :func:`cpu_buffer_cache`; mlx-lm empties MLX's cache
    after every step unless it holds more than ``clear_cache_threshold`` bytes.
    """
    # iters + 1: the batch stream ends after `iters` batches, so the train report mlx-lm forces at its
    # last iteration never comes (train rows only every steps_per_report) and the stream validates last.
    args = mlx_trainer.TrainingArgs(
        batch_size=settings.batch_size,
        iters=plan.iters + 1,
        steps_per_report=settings.steps_per_report,
        steps_per_save=plan.iters + 2,  # no checkpoints of mlx-lm's own
        max_seq_length=settings.max_seq_length,
        adapter_file=str(outputs.last),
        grad_checkpoint=settings.grad_checkpoint,
        grad_accumulation_steps=settings.grad_accumulation_steps,
        clear_cache_threshold=int(buffer_cache_gb * GB) if buffer_cache_gb else 0,
    )
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        mlx_trainer.train(model=model, optimizer=optimizer, train_dataset=plan.train_set, args=args,
                          loss=loss, iterate_batches=iterate, training_callback=chain)


def fit(prepared: PreparedModel, plan: TrainingPlan, settings: TrainSettings, outputs: TrainOutputs,
        blas: BlasThreads) -> Fitted:
    """Train with the callbacks; save ``last.safetensors`` (and the best, if never validated).

    A diverged run (after iteration 0) ends here with what it learned before kept: the summary says
    it diverged and a sweep ranks it with the others.
    """
    model = prepared.model
    optimizer = build_optimizer(settings, plan.learning_rate)
    mx.eval(model.parameters())
    progress = tqdm(total=plan.iters, desc="train", unit="it", leave=False, disable=None)
    chain, metrics, best = _callbacks(model, optimizer, plan, settings, outputs, progress)
    iterate = batch_stream(progress, blas, steps=plan.iters, validate=chain.validate,
                           stop=lambda: best.stop_iteration is not None)
    # Logits only at scored positions when the model allows it: the same loss value, less work.
    loss: Callable[..., Any] = masked_loss
    if supports_target_loss(model):
        iterate, loss = with_targets(iterate), target_loss
    logger.info("loss: %s", "logits at scored positions only (target_loss)" if loss is target_loss
                else "masked_loss over all positions")
    kernels = cpu_kernels(settings)
    ops = composed_ops() if kernels["active"] else contextlib.nullcontext()
    if kernels["active"]:
        loss = with_cross_entropy(loss, cross_entropy)
    group = mx.distributed.init()
    if group.size() > 1:
        loss = global_token_mean(loss, group)
    mx.reset_peak_memory()
    diverged: TrainingDiverged | None = None
    train_started = time.perf_counter()
    try:
        limit = plan.memory_limit_gb / plan.processes.count if plan.memory_limit_gb else None
        cache_gb = cache_limit_gb(plan.memory.total / GB, limit)
        with ops, cpu_buffer_cache(cache_gb, gpu=on_gpu()) as buffer_cache_gb:
            _train(model, optimizer, plan, settings, outputs, loss, iterate, chain, buffer_cache_gb)
    except TrainingDiverged as exc:
        if exc.iteration == 0:  # the data gives no loss: nothing was trained, nothing to keep
            raise
        logger.error("%s", exc)
        diverged = exc
    finally:
        progress.close()
    train_seconds = time.perf_counter() - train_started
    if best.stop_iteration is not None:
        logger.info("early stopping at iter %d: no val improvement in %d evaluations", best.stop_iteration,
                    best.evals_without_improvement)
    save_weights(model, outputs.last)
    if not outputs.adapters.exists():  # only if no val report ever ran
        shutil.copyfile(outputs.last, outputs.adapters)
    if diverged is not None:
        iterations_run = diverged.iteration
    else:
        iterations_run = best.stop_iteration if best.stop_iteration is not None else plan.iters
    return Fitted(metrics, best, iterations_run, diverged, train_seconds, loss.__name__, kernels,
                  buffer_cache_gb)


# ----------------------------------------------------------------------------------- 5. summary


def summarize(settings: TrainSettings, prepared: PreparedModel, plan: TrainingPlan, fitted: Fitted,
              outputs: TrainOutputs) -> dict[str, Any]:
    """Draw the loss plot; return the summary of the run (environment and times are added by the caller)."""
    best, metrics = fitted.best, fitted.metrics
    if best.best_iteration == 0:
        logger.warning("the best val loss is the untrained model's (iteration 0): the adapter is a no-op; "
                       "check train.learning_rate and the data")
    model_name = f"{prepared.config.get('model_type', 'model')} {prepared.total_params / 1e6:.0f}M"
    plot_losses(metrics.rows, outputs.plot, best_iteration=best.best_iteration,
                batches_per_epoch=plan.batches_per_epoch,
                title=f"Fine-tuning loss ({settings.fine_tune_type}, {model_name})")
    val_losses = metrics.val_losses()
    diverged = fitted.diverged
    return {
        "settings": dataclasses.asdict(settings),
        "resolved": _resolved(settings, prepared, plan),
        "best_iteration": best.best_iteration,
        "best_epoch": metrics.epoch(best.best_iteration) if best.best_iteration is not None else None,
        "best_val_loss": best.best_loss if math.isfinite(best.best_loss) else None,
        "initial_val_loss": val_losses[0] if val_losses else None,
        "last_val_loss": val_losses[-1] if val_losses else None,
        "final_train_loss": metrics.final_train_loss,
        "iterations_run": fitted.iterations_run,
        "early_stopped": best.stop_iteration is not None,
        "diverged": {"iteration": diverged.iteration, "message": str(diverged)} if diverged else None,
        "tokens_per_second_mean": metrics.mean_tokens_per_second,
        "train_loss_function": fitted.loss_function,
        "cpu_kernels": fitted.cpu_kernels,
        "cpu_buffer_cache_gb": round(fitted.buffer_cache_gb, 2) if fitted.buffer_cache_gb else None,
        "tokens_counted": "answer tokens (prompt masked)" if settings.mask_prompt else "all but padding",
        "trained_tokens": int(metrics.train_tokens),
        "peak_memory_gb": round(mx.get_peak_memory() / 1e9, 3),
        "memory_estimate_gb": plan.memory.gigabytes(),
        "processes": plan.processes.record(),
        "memory_limit_gb": round(plan.memory_limit_gb, 2) if plan.memory_limit_gb else None,
        "trainable_parameters": prepared.trainable_params,
        "total_parameters": prepared.total_params,
        "seed": settings.seed,
        "dataset": {name: dataclasses.asdict(stats)
                    for name, stats in (("train", plan.train_stats), ("valid", plan.valid_stats))},
        "train_seconds": round(fitted.train_seconds, 2),
    }


def _resolved(settings: TrainSettings, prepared: PreparedModel, plan: TrainingPlan) -> dict[str, Any]:
    """The numbers the settings resolve to for this model and data."""
    return {
        "iters": plan.iters,
        "batches_per_epoch": plan.batches_per_epoch,
        "epochs": round(plan.iters / max(1, plan.batches_per_epoch), 4),
        "optimizer_updates": plan.updates,
        "warmup_updates": plan.warmup,
        "lora_scale": settings.scale if settings.fine_tune_type != "full" else None,
        "num_layers": prepared.num_layers,
        "model_layers": len(prepared.model.layers),
        "dtype": prepared.dtype,
        "dequantized": prepared.dequantized,
        "effective_seq_len": plan.seq_len,
    }


def _environment(blas: BlasThreads) -> dict[str, Any]:
    return {
        "blas": BLAS,
        "blas_threads": blas.record(),
        "device": str(mx.default_device()),
        "platform": platform.platform(),
        "mlx_version": MLX_VERSION,
    }
