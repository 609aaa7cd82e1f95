"""Test loss and perplexity with the prompt masked: only assistant tokens count (MLX).

Tokenization and the prompt offset come from mlx-lm's own tuner code (``ChatDataset`` with
``mask_prompt=True``, the same code that trains with a masked prompt), and batches are padded the
way ``mlx_lm.tuner.trainer.iterate_batches`` pads them. Two things differ from mlx-lm 0.32.2, on
purpose:

* :func:`masked_loss` counts targets ``offset .. L-1`` of a row of ``L`` real tokens.
  ``trainer.default_loss`` uses ``steps <= L`` and so also scores the first padding position (token
  id 0) of every padded row (mlx-lm PR #1697 describes it): one extra, meaningless target per example.
* :func:`iterate_eval_batches` yields every example exactly once, in a fixed order, with its index;
  ``trainer.iterate_batches`` drops the examples that do not fill a last batch, fails when there are
  fewer examples than ``batch_size`` and shuffles batches, so per-example losses would be lost. It
  also pads only to the longest row (training pads to a multiple of 32 for compiled shapes).

:func:`masked_loss` has the signature of ``default_loss``, so it can be passed as ``loss=`` to
``mlx_lm.tuner.trainer.evaluate`` / ``train``.
"""

from __future__ import annotations

from tubetune.mlxrt import mx

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.nn as nn
import numpy as np
from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
from tqdm import tqdm

from tubetune.errors import InputFileError

logger = logging.getLogger(__name__)


def per_example_loss(model: Any, batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
    """Summed cross-entropy and number of scored targets per row.

    ``batch`` is ``[B, T]`` token ids (right padded), ``lengths`` is ``[B, 2]`` with the prompt
    offset and the real length of each row (the layout of mlx-lm's ``iterate_batches``). Token ``t``
    of a row is scored when ``offset <= t < length``; with ``offset = 0`` every token after the
    first is scored (the unmasked loss).
    """
    ce, mask = _masked_cross_entropy(model, batch, lengths, upcast=True)
    return ce.sum(axis=1), mask.sum(axis=1)


def _masked_cross_entropy(
    model: Any, batch: mx.array, lengths: mx.array, *, upcast: bool,
    cross_entropy: Callable[[mx.array, mx.array], mx.array] = nn.losses.cross_entropy,
) -> tuple[mx.array, mx.array]:
    inputs = batch[:, :-1]
    targets = batch[:, 1:]
    logits = model(inputs)
    if upcast:
        logits = logits.astype(mx.float32)
    steps = mx.arange(1, targets.shape[1] + 1)  # index of each target in the un-shifted row
    mask = mx.logical_and(steps >= lengths[:, 0:1], steps < lengths[:, 1:])
    ce = cross_entropy(logits, targets).astype(mx.float32) * mask
    return ce, mask


def masked_loss(
    model: Any, batch: mx.array, lengths: mx.array, *,
    cross_entropy: Callable[[mx.array, mx.array], mx.array] = nn.losses.cross_entropy,
) -> tuple[mx.array, mx.array]:
    """Drop-in replacement for ``mlx_lm.tuner.trainer.default_loss`` without the padding target.

    The train rule passes it as ``loss=`` to mlx-lm's ``train()``, so the validation loss that picks
    the best adapter is measured exactly like the test loss of the evaluate rule. Like
    ``default_loss`` it keeps the logits in the model's dtype (a float32 copy of ``[B, T, vocab]``
    costs 0.5 GB per 1,024 tokens of Llama 3 on a 16 GB Mac); the cross-entropy is summed in float32.
    """
    ce, mask = _masked_cross_entropy(model, batch, lengths, upcast=False, cross_entropy=cross_entropy)
    total = mask.sum()
    return ce.sum() / total, total


def iterate_eval_batches(
    dataset: Any, batch_size: int, max_seq_length: int
) -> Iterator[tuple[list[int], mx.array, mx.array]]:
    """Every example once, shortest first: ``(indices, batch [B, T], lengths [B, 2])``.

    ``dataset[i]`` is ``(tokens, prompt_offset)`` (an mlx-lm ``CacheDataset``). Rows are truncated to
    ``max_seq_length`` and right padded with 0 to the longest row of the batch, with the
    ``(offset, length)`` layout of mlx-lm's ``iterate_batches``; the last batch may be smaller than
    ``batch_size``.
    """
    order = sorted(range(len(dataset)), key=lambda i: (len(dataset[i][0]), i))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        rows = [dataset[i] for i in indices]
        longest = max(len(tokens) for tokens, _ in rows)
        width = min(longest, max_seq_length)
        array = np.zeros((len(rows), width), np.int32)
        lengths = []
        for row, (tokens, offset) in enumerate(rows):
            length = min(len(tokens), max_seq_length)
            array[row, :length] = tokens[:length]
            lengths.append((offset, length))
        yield indices, mx.array(array), mx.array(lengths)


@dataclass(frozen=True)
class ExampleLoss:
    loss: float | None  # None when no assistant token is left (prompt longer than max_seq_length)
    n_tokens: int
    truncated: bool


@dataclass
class LossResult:
    """Token-weighted loss over a dataset and the loss of each example."""

    loss: float
    perplexity: float
    n_tokens: int  # scored (assistant) tokens
    n_input_tokens: int  # all tokens run through the model (prompt and answer, no padding)
    seconds: float
    examples: list[ExampleLoss] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Forward-pass throughput: input tokens per second."""
        return self.n_input_tokens / self.seconds if self.seconds > 0 else math.nan


def chat_dataset(
    rows: Sequence[Mapping[str, Any]], tokenizer: Any, mask_prompt: bool = True
) -> CacheDataset:
    """mlx-lm's chat dataset (tokens, prompt offset) over rows with a "messages" list."""
    data: list[Any] = [{"messages": list(row["messages"])} for row in rows]
    return CacheDataset(ChatDataset(data, tokenizer, chat_key="messages", mask_prompt=mask_prompt))


def dataset_loss(
    model: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    max_seq_length: int,
    mask_prompt: bool = True,
    label: str = "loss",
) -> LossResult:
    """Loss of ``model`` on chat ``rows``: mean cross-entropy per scored token, and per example."""
    if not rows:
        raise InputFileError("no examples to compute the test loss on")
    started = time.perf_counter()
    model.eval()
    dataset = chat_dataset(rows, tokenizer, mask_prompt)
    try:
        for index in range(len(dataset)):
            _ = dataset[index]  # tokenize once, up front: a template error is reported here
    except (ValueError, TypeError, KeyError) as exc:
        raise InputFileError(f"{label}: cannot apply the model's chat template ({exc})") from exc
    ce_sums = [0.0] * len(rows)
    counts = [0] * len(rows)
    truncated = [False] * len(rows)
    batches = iterate_eval_batches(dataset, batch_size, max_seq_length)
    n_batches = (len(rows) + batch_size - 1) // batch_size
    for indices, batch, lengths in tqdm(batches, total=n_batches, desc=label, unit="batch"):
        ce_sum, ntoks = per_example_loss(model, batch, lengths)
        mx.eval(ce_sum, ntoks)
        values: list[float] = ce_sum.tolist()  # type: ignore[assignment]
        tokens: list[int] = ntoks.tolist()  # type: ignore[assignment]
        for index, value, count in zip(indices, values, tokens, strict=True):
            ce_sums[index] = float(value)
            counts[index] = int(count)
            truncated[index] = len(dataset[index][0]) > max_seq_length
    examples = [
        ExampleLoss(loss=(s / n if n else None), n_tokens=n, truncated=t)
        for s, n, t in zip(ce_sums, counts, truncated, strict=True)
    ]
    if any(truncated):
        logger.warning(
            "%s: %d of %d examples are longer than %d tokens and were truncated",
            label, sum(truncated), len(rows), max_seq_length,
        )
    empty = sum(1 for e in examples if e.n_tokens == 0)
    if empty:
        logger.warning("%s: %d examples have no assistant token within %d tokens: not scored",
                       label, empty, max_seq_length)
    total = sum(counts)
    if total == 0:
        raise InputFileError(
            f"{label}: no assistant token to score (evaluate.loss_max_seq_length {max_seq_length} too small?)"
        )
    loss = sum(ce_sums) / total
    return LossResult(
        loss=loss,
        perplexity=math.exp(loss),
        n_tokens=total,
        n_input_tokens=sum(min(len(dataset[i][0]), max_seq_length) for i in range(len(rows))),
        seconds=time.perf_counter() - started,
        examples=examples,
    )


def load_model(model_dir: Path) -> tuple[Any, Any]:
    """``mlx_lm.load`` with a one-line error when the directory is not a loadable model."""
    from mlx_lm import load

    if not Path(model_dir).is_dir():
        raise InputFileError(f"{model_dir}: model directory not found")
    try:
        model, tokenizer = load(str(model_dir))[:2]
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise InputFileError(f"{model_dir}: mlx_lm cannot load this model ({exc})") from exc
    return model, tokenizer


def model_test_loss(
    model_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    max_seq_length: int,
    label: str = "loss",
) -> LossResult:
    """Masked test loss of the model in ``model_dir`` (loaded with mlx-lm, freed afterwards)."""
    model, tokenizer = load_model(model_dir)
    try:
        result = dataset_loss(
            model, tokenizer, rows, batch_size=batch_size, max_seq_length=max_seq_length, label=label
        )
    finally:
        del model
        mx.clear_cache()
    logger.info(
        "%s: test loss %.4f, perplexity %.3f over %d assistant tokens (%d tokens in %.1f s, %.0f tok/s)",
        label, result.loss, result.perplexity, result.n_tokens, result.n_input_tokens, result.seconds,
        result.tokens_per_s,
    )
    return result

