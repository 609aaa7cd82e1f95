"""Peak memory estimate of a fine-tuning run, checked against ``train.max_memory_gb`` before training.

Formula (bytes; ``b`` batch size, ``s`` sequence length actually used, ``L`` trained layers,
``h`` hidden size, ``i`` MLP size, ``kv`` key/value width, ``a`` attention heads, ``V`` vocabulary,
``x`` bytes per activation: 4 for float32, 2 for bfloat16 / float16):

* weights       = the bytes of every model parameter in the dtype it is trained in (LoRA
                  parameters included; quantized layers at their packed size)
* trainable     = trainable parameters x 4 bytes x (1 gradient + 2 Adam moments
                  [+ 1 gradient accumulator when grad_accumulation_steps > 1])
* activations   = b x s x L x (8h + 2kv + 4i + a*s) x ``x``
                  (per token and layer: norm, q/k/v, attention probabilities over s positions,
                  attention output, o_proj, residuals, the four SwiGLU MLP tensors);
                  with gradient checkpointing only each layer's input is kept, plus one layer
                  recomputed: b x s x (L h + 8h + 2kv + 4i + a*s) x ``x``
* logits        = b x s x V x (2``x`` + 8): logits and their gradient, float32 log-softmax and its
                  gradient in the cross entropy

The total is a planning figure (the measured peak is in summary.json); its purpose is to fail in
seconds with advice instead of swapping or being killed an hour in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from tubetune.errors import TubetuneError

logger = logging.getLogger(__name__)

GB = 1e9
DEFAULT_RAM_FRACTION = 0.8


class MemoryLimitError(TubetuneError):
    """The estimated peak memory of training exceeds train.max_memory_gb."""


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only transformer that drive training memory."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> ModelShape:
        """From a Hugging Face / mlx-lm ``config.json`` dict (Llama-style keys)."""
        text = config.get("text_config", config)
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        return cls(
            num_layers=int(text["num_hidden_layers"]),
            hidden_size=hidden,
            intermediate_size=int(text.get("intermediate_size", 4 * hidden)),
            num_attention_heads=heads,
            num_key_value_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            vocab_size=int(text["vocab_size"]),
        )

    @property
    def kv_width(self) -> int:
        return self.num_key_value_heads * self.head_dim


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes of each part of the training footprint."""

    weights: int
    trainable: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.activations + self.logits

    def describe(self) -> str:
        parts = asdict(self)
        detail = ", ".join(f"{name} {value / GB:.2f}" for name, value in parts.items())
        return f"{self.total / GB:.2f} GB ({detail})"

    def gigabytes(self) -> dict[str, float]:
        """Each part and the total in GB (3 decimals), for summary.json."""
        data = {name: round(value / GB, 3) for name, value in asdict(self).items()}
        data["total"] = round(self.total / GB, 3)
        return data


def estimate_memory(
    shape: ModelShape,
    *,
    weights_bytes: int,
    trainable_params: int,
    activation_bytes: int,
    batch_size: int,
    seq_len: int,
    trained_layers: int,
    grad_checkpoint: bool,
    grad_accumulation_steps: int = 1,
) -> MemoryEstimate:
    """The formula of the module docstring."""
    h, i, kv, a = shape.hidden_size, shape.intermediate_size, shape.kv_width, shape.num_attention_heads
    layers = max(1, min(trained_layers, shape.num_layers))
    per_token_layer = 8 * h + 2 * kv + 4 * i + a * seq_len
    tokens = batch_size * seq_len
    if grad_checkpoint:
        activation_elems = tokens * (layers * h + per_token_layer)
    else:
        activation_elems = tokens * layers * per_token_layer
    copies = 3 + (1 if grad_accumulation_steps > 1 else 0)
    return MemoryEstimate(
        weights=int(weights_bytes),
        trainable=trainable_params * 4 * copies,
        activations=activation_elems * activation_bytes,
        logits=tokens * shape.vocab_size * (2 * activation_bytes + 8),
    )


def physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit_gb(max_memory_gb: float | None) -> float | None:
    """``train.max_memory_gb``, or 80% of physical memory when it is null."""
    if max_memory_gb is not None:
        return max_memory_gb
    physical = physical_memory_bytes()
    return None if physical is None else DEFAULT_RAM_FRACTION * physical / GB


def check_memory(estimate: MemoryEstimate, limit_gb: float | None, *, grad_checkpoint: bool,
                 processes: int = 1) -> None:
    """Raise :class:`MemoryLimitError` (one line of advice) when ``processes`` times the estimate (of one
    training process) exceeds the limit."""
    if limit_gb is None or processes * estimate.total <= limit_gb * GB:
        return
    advice = "lower train.batch_size or train.max_seq_length"
    if not grad_checkpoint:
        advice += ", set train.grad_checkpoint: true"
    if processes > 1:
        advice += ", lower train.cpu_processes"
    advice += ", train fewer train.num_layers, or raise train.max_memory_gb if the machine has the memory"
    each = f" in {processes} processes" if processes > 1 else ""
    raise MemoryLimitError(
        f"training needs about {processes * estimate.total / GB:.1f} GB{each}, more than train.max_memory_gb "
        f"{limit_gb:.1f} GB (weights {processes * estimate.weights / GB:.1f}, activations "
        f"{processes * (estimate.activations + estimate.logits) / GB:.1f}): {advice}"
    )
