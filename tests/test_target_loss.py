"""The training loss that projects only scored positions equals the masked loss, value and gradient."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tubetune.train.target_loss import INDEX_MULTIPLE, supports_target_loss, target_index


def test_target_index_matches_the_masked_loss_positions() -> None:
    # rows of width 6 -> 5 targets each; row 0: prompt of 2 tokens, 5 real tokens; row 1: no prompt, 3
    index, weight = target_index(np.array([[2, 5], [0, 3]]), width=6, multiple=8)
    # masked_loss scores target j when offset <= j + 1 < length: row 0 -> j = 1, 2, 3; row 1 -> j = 0, 1
    assert index.tolist() == [1, 2, 3, 5, 6, 0, 0, 0]
    assert weight.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


def test_target_index_pads_to_a_multiple_and_handles_rows_without_targets() -> None:
    index, weight = target_index(np.array([[4, 4], [9, 9]]), width=10)
    assert len(index) == INDEX_MULTIPLE and weight.sum() == 0
    index, weight = target_index(np.array([[1, 40]] * 3), width=40)
    assert len(index) == 2 * INDEX_MULTIPLE and weight.sum() == 3 * 39


def test_only_llama_models_use_it() -> None:
    def model(model_type: str) -> SimpleNamespace:
        args = SimpleNamespace(model_type=model_type, tie_word_embeddings=True)
        return SimpleNamespace(args=args, model=object())

    llama, gemma = model("llama"), model("gemma3_text")
    assert supports_target_loss(llama) and not supports_target_loss(gemma)


@pytest.mark.slow
def test_same_loss_and_gradient_as_masked_loss(base_model_dir: Path, chat_dataset_dir: Path) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.trainer import iterate_batches

    from tubetune.jsonio import read_jsonl
    from tubetune.train.loss import chat_dataset, masked_loss
    from tubetune.train.target_loss import target_loss, with_targets

    loaded = load(str(base_model_dir))
    model, tokenizer = loaded[0], loaded[1]
    assert supports_target_loss(model)
    model.freeze()
    model.model.layers[-1].unfreeze()
    model.model.embed_tokens.unfreeze()  # tied: the output projection gets a gradient too
    dataset = chat_dataset(read_jsonl(chat_dataset_dir / "train.jsonl"), tokenizer, True)
    batches = with_targets(iterate_batches)(dataset=dataset, batch_size=4, max_seq_length=256)
    batch, lengths, index, weight = next(iter(batches))
    assert float(weight.sum()) < batch.shape[0] * (batch.shape[1] - 1)  # prompts and padding skipped

    def grads(loss: Any, *args: mx.array) -> tuple[float, int, dict[str, mx.array]]:
        (value, ntoks), grad = nn.value_and_grad(model, loss)(model, *args)  # type: ignore[attr-defined]
        return float(value), int(ntoks), dict(tree_flatten(grad))

    dense_value, dense_n, dense_grad = grads(masked_loss, batch, lengths)
    sparse_value, sparse_n, sparse_grad = grads(target_loss, batch, lengths, index, weight)
    assert sparse_n == dense_n == int(weight.sum())
    assert sparse_value == pytest.approx(dense_value, rel=1e-5)
    assert dense_grad.keys() == sparse_grad.keys() and dense_grad
    for name, value in dense_grad.items():
        np.testing.assert_allclose(np.array(sparse_grad[name]), np.array(value), rtol=1e-3, atol=1e-6,
                                   err_msg=name)
