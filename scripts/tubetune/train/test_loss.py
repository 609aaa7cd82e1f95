"""Masked test loss and perplexity of one training run: the base model with the run's best adapter.

Cheap (MLX, no fusing, no generation): the adapter is applied as mlx-lm does
(:func:`tubetune.train.adapter.load_adapted`), then :func:`tubetune.train.loss.dataset_loss` scores
the assistant tokens of the test split. The sweep ranking shows the number; it never picks the winner.
"""

from __future__ import annotations

from tubetune.mlxrt import BLAS, mx

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tubetune.chat import read_chat_rows
from tubetune.errors import InputFileError
from tubetune.jsonio import write_json
from tubetune.train.adapter import load_adapted
from tubetune.train.loss import dataset_loss

logger = logging.getLogger(__name__)


def test_loss(
    test: str | Path,
    base: str | Path,
    *,
    adapters: str | Path,
    adapter_config: str | Path,
    out: str | Path,
    run: str,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The rule ``test_loss``: write ``{"run", "loss", "perplexity", "n_examples", "n_tokens", ...}`` to
    ``out`` and return it.

    ``settings``: ``loss_batch_size``, ``loss_max_seq_length`` and ``max_examples`` (only the first N test
    examples, as the evaluation scores them) of the ``evaluate`` section.
    """
    batch_size, max_seq_length = int(settings["loss_batch_size"]), int(settings["loss_max_seq_length"])
    logger.info("BLAS: %s; test loss of run %s (%s on %s)", BLAS, run, adapters, base)
    rows = read_chat_rows(test, max_rows=settings["max_examples"])
    if not rows:
        raise InputFileError(f"{test}: the test split is empty: no test loss for run '{run}'")
    model, tokenizer, _ = load_adapted(base, adapters, adapter_config)
    try:
        result = dataset_loss(model, tokenizer, rows, batch_size=batch_size, max_seq_length=max_seq_length,
                              label=f"test loss {run}")
    finally:
        del model
        mx.clear_cache()
    data = {
        "run": run,
        "loss": result.loss,
        "perplexity": result.perplexity,
        "n_examples": len(rows),
        "n_tokens": result.n_tokens,
        "n_input_tokens": result.n_input_tokens,
        "max_seq_length": max_seq_length,
        "seconds": round(result.seconds, 2),
    }
    write_json(out, data)
    logger.info("run %s: test loss %.4f, perplexity %.3f over %d assistant tokens of %d examples", run,
                result.loss, result.perplexity, result.n_tokens, len(rows))
    return data


test_loss.__test__ = False  # type: ignore[attr-defined]  # a rule's entry, not a pytest test
