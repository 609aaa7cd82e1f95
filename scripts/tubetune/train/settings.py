"""Resolved fine-tuning settings: the ``train`` section of the config as a typed dataclass.

The config schema checks types and ranges and fills defaults; this module adds the checks that
involve several keys (iters vs epochs) and turns user-facing names into mlx-lm's (``alpha`` into
``scale``, ``epochs`` into ``iters``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
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
    """Every knob of one fine-tuning run (see config.schema.yaml for the meaning of each)."""

    profile: str | None = None
    fine_tune_type: FineTuneType = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    num_layers: int = 16
    lora_keys: tuple[str, ...] | None = None
    epochs: float | None = None
    iters: int | None = None
    batch_size: int = 4
    grad_accumulation_steps: int = 1
    max_seq_length: int = 1024
    learning_rate: float = 1e-4
    lr_schedule: Schedule = "cosine"
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    optimizer: OptimizerName = "adamw"
    weight_decay: float = 0.0
    mask_prompt: bool = True
    grad_checkpoint: bool = False
    seed: int = 0
    dtype: DtypeName = "auto"
    steps_per_report: int = 10
    steps_per_eval: int = 50
    val_batches: int = -1
    early_stopping_patience: int | None = 3
    early_stopping_min_delta: float = 0.0
    max_memory_gb: float | None = None
    keep_eval_checkpoints: bool = False

    @classmethod
    def from_config(cls, train: Mapping[str, Any]) -> TrainSettings:
        """Build from ``config["train"]`` (profile applied, defaults filled); one-line errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(train) - known)
        if unknown:
            raise ConfigError(f"config error: unknown train key(s): {', '.join(unknown)}")
        values: dict[str, Any] = {key: train[key] for key in known if key in train}
        if values.get("lora_keys") is not None:
            values["lora_keys"] = tuple(values["lora_keys"])
        for name in ("alpha", "dropout", "epochs", "learning_rate", "warmup_ratio", "min_lr_ratio",
                     "weight_decay", "early_stopping_min_delta"):
            if name in values and values[name] is not None:
                values[name] = float(values[name])
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-key checks; raise :class:`ConfigError` with one line, warn on odd values."""
        if (self.iters is None) == (self.epochs is None):
            where = f" (profile '{self.profile}' sets one of them)" if self.profile else ""
            raise ConfigError(
                "config error: set exactly one of train.iters and train.epochs"
                f"{where}; set the other to null"
            )
        if self.iters is not None and self.iters < 1:
            raise ConfigError("config error: train.iters must be at least 1")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError("config error: train.epochs must be greater than 0")
        if self.num_layers == 0 or self.num_layers < -1:
            raise ConfigError("config error: train.num_layers must be -1 (all layers) or at least 1")
        if self.fine_tune_type != "full" and self.rank < 1:
            raise ConfigError("config error: train.rank must be at least 1")
        if self.iters is not None and self.iters % self.grad_accumulation_steps:
            logger.warning(
                "train.iters %d is not a multiple of train.grad_accumulation_steps %d: the last %d batches "
                "add no optimizer update", self.iters, self.grad_accumulation_steps,
                self.iters % self.grad_accumulation_steps,
            )
        if self.steps_per_eval % self.steps_per_report:
            raise ConfigError(
                f"config error: train.steps_per_eval ({self.steps_per_eval}) must be a multiple of "
                f"train.steps_per_report ({self.steps_per_report})"
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

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["lora_keys"] is not None:
            data["lora_keys"] = list(data["lora_keys"])
        return data


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
