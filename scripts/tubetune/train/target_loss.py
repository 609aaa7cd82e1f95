"""Training loss that computes logits only where a token is scored.

With the prompt masked, a third or more of every batch (system prompt, question, padding) is never
scored, yet ``default_loss`` / :func:`tubetune.train.loss.masked_loss` project every position onto the
vocabulary: ``[B, T, vocab]`` logits, their softmax and its gradient. On SmolLM2 (vocab 49,152) that
projection and the cross-entropy are a large share of a CPU step; on Llama 3 (vocab 128,256) the float
logits of one 1,024-token row are 0.5 GB, twice more for their gradient, on a 16 GB Mac.

:func:`target_loss` runs the transformer body on all positions (attention needs them), gathers the
hidden states of the scored positions only, and applies the output projection and the cross-entropy to
those. The result is the same number as :func:`masked_loss` (the same positions, the same sum); only
the work on unscored positions is skipped.

The scored positions are computed on the host by :func:`with_targets`, which wraps mlx-lm's
``iterate_batches`` and adds two arrays to each ``(batch, lengths)``: flat indices into the
``[B * (T - 1)]`` targets, padded to a multiple of ``INDEX_MULTIPLE`` so the compiled training step sees
few distinct shapes, and a 0/1 weight that zeroes the padding. ``mlx_lm.tuner.trainer.train`` passes
every element of a batch to the loss, in training and in its own validation passes.

Only model types whose ``Model.__call__`` is "body, then the tied embedding or ``lm_head``" are
supported (:data:`SUPPORTED_MODEL_TYPES`); other models train with :func:`masked_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

INDEX_MULTIPLE = 64
SUPPORTED_MODEL_TYPES = frozenset({"llama"})  # SmolLM2, Llama 3.x: see mlx_lm.models.llama.Model


def supports_target_loss(model: Any) -> bool:
    """True when ``model`` is an mlx-lm Llama: ``model.model`` is the body, the head is known."""
    args = getattr(model, "args", None)
    if getattr(args, "model_type", None) not in SUPPORTED_MODEL_TYPES or not hasattr(model, "model"):
        return False
    return bool(getattr(args, "tie_word_embeddings", False)) or hasattr(model, "lm_head")


def target_index(
    lengths: np.ndarray, width: int, multiple: int = INDEX_MULTIPLE
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the scored targets of a ``[B, width]`` batch and their 0/1 weights.

    ``lengths`` is ``[B, 2]``: prompt offset and real length of each row (mlx-lm's layout). Target ``j``
    of a row (the token at ``j + 1``) is scored when ``offset <= j + 1 < length``, exactly the mask of
    :func:`tubetune.train.loss.masked_loss`. The index is padded with 0 (weight 0) to a multiple of
    ``multiple``; a batch without any scored target still gets ``multiple`` padding entries.
    """
    steps = width - 1
    chunks = []
    for row, (offset, length) in enumerate(np.asarray(lengths, dtype=np.int64).tolist()):
        first, last = max(int(offset) - 1, 0), min(int(length) - 1, steps)
        if last > first:
            chunks.append(np.arange(first, last, dtype=np.int64) + row * steps)
    index = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    size = max(multiple, -(-len(index) // multiple) * multiple)
    padded = np.zeros(size, dtype=np.int32)
    padded[: len(index)] = index
    weight = np.zeros(size, dtype=np.float32)
    weight[: len(index)] = 1.0
    return padded, weight


def with_targets(iterate_batches: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """Wrap an mlx-lm ``iterate_batches``: yield ``(batch, lengths, index, weight)``."""

    def iterate(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for batch, lengths in iterate_batches(*args, **kwargs):
            index, weight = target_index(np.array(lengths), int(batch.shape[1]))
            yield batch, lengths, mx.array(index), mx.array(weight)

    return iterate


def _head(model: Any, hidden: mx.array) -> mx.array:
    if model.args.tie_word_embeddings:
        return model.model.embed_tokens.as_linear(hidden)  # type: ignore[no-any-return]
    return model.lm_head(hidden)  # type: ignore[no-any-return]


def target_loss(
    model: Any, batch: mx.array, lengths: mx.array, index: mx.array, weight: mx.array, *,
    cross_entropy: Callable[[mx.array, mx.array], mx.array] = nn.losses.cross_entropy,
) -> tuple[mx.array, mx.array]:
    """Mean cross-entropy over the scored targets (see the module doc) and their number.

    ``lengths`` is not used: ``index`` and ``weight`` were computed from it on the host.
    ``cross_entropy``: per-position loss of ``(logits, targets)`` (see :mod:`tubetune.train.cpu_ops`).
    """
    del lengths
    inputs = batch[:, :-1]
    targets = batch[:, 1:].reshape(-1)
    hidden = model.model(inputs)
    hidden = hidden.reshape(-1, hidden.shape[-1])[index]
    logits = _head(model, hidden)
    ce = cross_entropy(logits, targets[index]).astype(mx.float32) * weight
    ntoks = weight.sum()
    return ce.sum() / mx.maximum(ntoks, 1.0), ntoks.astype(mx.int32)
