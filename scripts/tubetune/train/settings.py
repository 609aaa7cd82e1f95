"""The ``train`` section of the config as a typed dataclass, and the arithmetic of epochs and LoRA scale.

config.schema.yaml holds every default and bound; :class:`TrainSettings` adds only the checks that
involve several keys (iters vs epochs, eval vs report steps) and turns user-facing names into
mlx-lm's (``alpha`` into ``scale``, ``epochs`` into ``iters``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

from tubetune.errors import ConfigError

logger = logging.getLogger(__name__)

FineTuneType = Literal["lora", "dora", "full"]
Schedule = Literal["constant", "cosine", "linear"]
OptimizerName = Literal["adam", "adamw"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]

LR_RANGE = (1e-6, 1e-3)


@dataclass(frozen=True)
class TrainSettings:
    """Every knob of one fine-tuning run: the config's ``train`` section (profile applied, defaults
    filled), built with ``settings_from(TrainSettings, config["train"], "train")``. The meaning,
    default and bounds of each key are in config.schema.yaml."""

    profile: str | None
    fine_tune_type: FineTuneType
    rank: int
    alpha: float
    dropout: float
    num_layers: int
    lora_keys: tuple[str, ...] | None
    epochs: float | None
    iters: int | None
    batch_size: int
    grad_accumulation_steps: int
    max_seq_length: int
    learning_rate: float
    lr_schedule: Schedule
    warmup_ratio: float
    min_lr_ratio: float
    optimizer: OptimizerName
    weight_decay: float
    mask_prompt: bool
    grad_checkpoint: bool
    cpu_fused: bool
    cpu_processes: int | None
    seed: int
    dtype: DtypeName
    steps_per_report: int
    steps_per_eval: int
    val_batches: int
    early_stopping_patience: int | None
    early_stopping_min_delta: float
    max_memory_gb: float | None
    keep_eval_checkpoints: bool

    def __post_init__(self) -> None:
        """Checks across keys (one-line :class:`ConfigError`); warnings about odd values."""
        if (self.iters is None) == (self.epochs is None):
            where = f" (profile '{self.profile}' sets one of them)" if self.profile else ""
            raise ConfigError(
                f"config error: set exactly one of train.iters and train.epochs{where}; set the other to null"
            )
        # The schema allows -1 (all layers) and 0 in the same range; 0 would train nothing.
        if self.num_layers == 0:
            raise ConfigError("config error: train.num_layers must be -1 (all layers) or at least 1")
        if self.steps_per_eval % self.steps_per_report:
            raise ConfigError(
                f"config error: train.steps_per_eval ({self.steps_per_eval}) must be a multiple of "
                f"train.steps_per_report ({self.steps_per_report})"
            )
        if self.iters is not None and self.iters % self.grad_accumulation_steps:
            logger.warning(
                "train.iters %d is not a multiple of train.grad_accumulation_steps %d: the last %d batches "
                "add no optimizer update", self.iters, self.grad_accumulation_steps,
                self.iters % self.grad_accumulation_steps,
            )
        low, high = LR_RANGE
        if not low <= self.learning_rate <= high:
            logger.warning(
                "train.learning_rate %.2g is outside the usual range %.0e..%.0e for fine-tuning: "
                "expect no learning (too low) or divergence (too high)", self.learning_rate, low, high
            )

    @property
    def scale(self) -> float:
        """mlx-lm's LoRA ``scale``: ``alpha / rank`` (the update is ``scale * x @ A @ B``)."""
        return alpha_to_scale(self.alpha, self.rank)

    def lora_parameters(self) -> dict[str, Any]:
        """The ``lora_parameters`` dict mlx-lm's ``linear_to_lora_layers`` and adapter_config use."""
        params: dict[str, Any] = {"rank": self.rank, "scale": self.scale, "dropout": self.dropout}
        if self.lora_keys is not None:
            params["keys"] = list(self.lora_keys)
        return params

    def resolve_iters(self, num_train_examples: int) -> int:
        """Training iterations (micro-batches): ``iters`` as given, or from ``epochs``."""
        if self.iters is not None:
            return self.iters
        assert self.epochs is not None
        return epochs_to_iters(
            self.epochs, num_train_examples, self.batch_size, multiple_of=self.grad_accumulation_steps
        )


def alpha_to_scale(alpha: float, rank: int) -> float:
    """LoRA ``alpha`` (PEFT's convention) as mlx-lm's ``scale``: ``alpha / rank``."""
    if rank < 1:
        raise ConfigError("config error: train.rank must be at least 1")
    return alpha / rank


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
    """Batches mlx-lm draws per pass over the data (it drops the incomplete last batch)."""
    return num_examples // batch_size


def epochs_to_iters(epochs: float, num_examples: int, batch_size: int, *, multiple_of: int = 1) -> int:
    """Iterations for ``epochs`` passes over ``num_examples`` examples in batches of ``batch_size``.

    Rounded up to a multiple of ``multiple_of`` (the gradient accumulation steps), so that the
    last micro-batches are applied by an optimizer update.
    """
    per_epoch = batches_per_epoch(num_examples, batch_size)
    if per_epoch < 1:
        raise ConfigError(
            f"config error: train.batch_size {batch_size} is larger than the training set "
            f"({num_examples} examples): lower train.batch_size"
        )
    iters = max(1, math.ceil(round(epochs * per_epoch, 6)))
    return math.ceil(iters / multiple_of) * multiple_of
