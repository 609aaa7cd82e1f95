"""Masked test loss and perplexity of one training run: the base model with the run's best adapter.

Cheap (MLX, no fusing, no generation): ``mlx_lm.load(base, adapter_path=...)`` applies the adapter
the way mlx-lm does, then :func:`tubetune.evaluate.loss.dataset_loss` scores the assistant tokens of
the test split. The sweep ranking shows the number; it never picks the winner.
"""

from __future__ import annotations

from tubetune.mlxrt import BLAS, mx

import logging
from pathlib import Path
from typing import Any

from tubetune.errors import InputFileError
from tubetune.evaluate.loss import dataset_loss
from tubetune.jsonio import read_jsonl, write_json

logger = logging.getLogger(__name__)


def adapter_test_loss(
    base_dir: str | Path,
    adapter_dir: str | Path,
    test_path: str | Path,
    out_path: str | Path,
    *,
    batch_size: int,
    max_seq_length: int,
    run: str,
    max_examples: int | None = None,
) -> dict[str, Any]:
    """Write ``{"run", "loss", "perplexity", "n_examples", "n_tokens", ...}`` to ``out_path``; return it.

    ``max_examples``: only the first N test examples (as ``evaluate.max_examples`` does for the evaluation).
    """
    from mlx_lm import load

    logger.info("BLAS: %s; test loss of run %s (%s on %s)", BLAS, run, adapter_dir, base_dir)
    rows = read_jsonl(test_path)[:max_examples]
    if not rows:
        raise InputFileError(f"{test_path}: the test split is empty: no test loss for run '{run}'")
    try:
        model, tokenizer = load(str(base_dir), adapter_path=str(adapter_dir))[:2]
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise InputFileError(f"{adapter_dir}: cannot load the adapter on {base_dir} ({exc})") from exc
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
    write_json(out_path, data)
    logger.info("run %s: test loss %.4f, perplexity %.3f over %d assistant tokens of %d examples", run,
                result.loss, result.perplexity, result.n_tokens, len(rows))
    return data
