"""The CPU step's composed ops compute what mlx-lm computes (value and gradient), and the JIT compiler
wrapper builds MLX's kernels with this CPU's flags into a cache per host and flags."""

from __future__ import annotations

from tubetune.mlxrt import mx

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlx.nn as nn
import mlx_lm.models.llama as llama_module
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.utils import linear_to_lora_layers

from tubetune.train import cpu_ops
from tubetune.train.jit import FLAGS, cache_key, prepare_jit
from tubetune.train.target_loss import target_index, target_loss

ROOT = Path(__file__).resolve().parents[1]
llama: Any = llama_module


def _tiny_llama(seed: int = 0) -> Any:
    """A random 2-block Llama with grouped queries (6 heads, 2 KV heads) and LoRA on every linear layer."""
    mx.random.seed(seed)
    args = llama.ModelArgs(model_type="llama", hidden_size=48, num_hidden_layers=2, intermediate_size=96,
                           num_attention_heads=6, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=300,
                           tie_word_embeddings=True)
    model = llama.Model(args)
    model.freeze()
    keys = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": keys})
    # LoRA's B starts at zero: give it values so that every gradient path is exercised.
    trainable: list[tuple[str, Any]] = tree_flatten(model.trainable_parameters())  # type: ignore[assignment]
    model.update(tree_unflatten([(name, mx.random.normal(value.shape) * 0.05) for name, value in trainable]))
    mx.eval(model.parameters())
    return model


def _batch() -> tuple[mx.array, mx.array, mx.array, mx.array]:
    rng = np.random.default_rng(1)
    batch = rng.integers(1, 300, (3, 17)).astype(np.int32)
    lengths = np.array([[4, 17], [2, 11], [6, 15]], dtype=np.int32)
    index, weight = target_index(lengths, batch.shape[1], multiple=8)
    return mx.array(batch), mx.array(lengths), mx.array(index), mx.array(weight)


def _loss_and_grads(model: Any, composed: bool, compiled: bool) -> tuple[float, dict[str, np.ndarray]]:
    ce = cpu_ops.cross_entropy if composed else cpu_ops.plain_cross_entropy
    loss = cpu_ops.with_cross_entropy(target_loss, ce)
    value_and_grad = nn.value_and_grad(model, lambda *batch: loss(model, *batch)[0])  # type: ignore[attr-defined]
    step = mx.compile(value_and_grad, inputs=model.state, outputs=model.state) if compiled else value_and_grad
    if composed:
        with cpu_ops.composed_ops():
            value, grads = step(*_batch())
    else:
        value, grads = step(*_batch())
    mx.eval(value, grads)
    flat: list[tuple[str, Any]] = tree_flatten(grads)  # type: ignore[assignment]
    return float(value), {name: np.array(array) for name, array in flat}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_composed_step_has_the_loss_and_gradients_of_mlx_lm(compiled: bool) -> None:
    model = _tiny_llama()
    plain_loss, plain_grads = _loss_and_grads(model, composed=False, compiled=compiled)
    loss, grads = _loss_and_grads(model, composed=True, compiled=compiled)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert grads.keys() == plain_grads.keys() and len(grads) == 2 * 7 * 2  # lora_a, lora_b x 7 x 2 blocks
    for name, grad in plain_grads.items():
        assert np.abs(grad).max() > 0, name
        np.testing.assert_allclose(grads[name], grad, rtol=1e-4, atol=2e-6, err_msg=name)


def test_composed_ops_are_swapped_in_only_inside_the_context() -> None:
    before = llama.swiglu, llama.scaled_dot_product_attention
    with cpu_ops.composed_ops():
        assert llama.swiglu is cpu_ops.silu_mul
        assert llama.scaled_dot_product_attention is cpu_ops.attention
    assert (llama.swiglu, llama.scaled_dot_product_attention) == before


@pytest.mark.parametrize("mask", ["causal", None])
def test_attention_matches_the_fast_kernel_with_grouped_queries(mask: str | None) -> None:
    mx.random.seed(2)
    q, k, v = mx.random.normal((2, 6, 9, 8)), mx.random.normal((2, 2, 9, 8)), mx.random.normal((2, 2, 9, 8))

    def total(fn: Any) -> Any:
        return mx.value_and_grad(lambda a, b, c: (fn(a, b, c) * mx.arange(8)).sum(), argnums=(0, 1, 2))

    fast = total(lambda a, b, c: mx.fast.scaled_dot_product_attention(a, b, c, scale=0.3, mask=mask))
    composed = total(lambda a, b, c: cpu_ops.attention(a, b, c, cache=None, scale=0.3, mask=mask))
    np.testing.assert_allclose(
        np.array(cpu_ops.attention(q, k, v, cache=None, scale=0.3, mask=mask)),
        np.array(mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask)),
        rtol=1e-5, atol=1e-6,
    )
    (want, want_grads), (got, got_grads) = fast(q, k, v), composed(q, k, v)
    # a weighted sum of 864 outputs that mostly cancel: float32 rounding of the terms is ~1e-4 of it
    assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-4)
    for a, b in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5)


def test_cross_entropy_is_exact_and_stable_on_large_logits() -> None:
    logits = mx.array([[1e4, 0.0, -1e4, 3.0], [0.5, 0.25, 0.0, -0.25]])
    targets = mx.array([3, 0])
    want = nn.losses.cross_entropy(logits, targets)
    got = cpu_ops.cross_entropy(logits, targets)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-6)
    grad = mx.grad(lambda x: cpu_ops.cross_entropy(x, targets).sum())(logits)
    want_grad = mx.grad(lambda x: nn.losses.cross_entropy(x, targets).sum())(logits)
    np.testing.assert_allclose(np.array(grad), np.array(want_grad), atol=1e-6)
    assert np.isfinite(np.array(got)).all()


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 11)])  # a new shape: batches of training vs validation
def test_silu_mul_gradient_matches_mlx(shape: tuple[int, ...]) -> None:
    gate, x = mx.random.normal(shape) * 4, mx.random.normal(shape)
    want = mx.grad(lambda a, b: (a * mx.sigmoid(a) * b * b).sum(), argnums=(0, 1))(gate, x)
    got = mx.grad(lambda a, b: (cpu_ops.silu_mul(a, b) * b).sum(), argnums=(0, 1))(gate, x)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)


def test_the_backward_pass_recomputes_the_sigmoid_in_a_fused_kernel(tmp_path: Path) -> None:
    """``mx.compile`` merges equal expressions: a ``sigmoid(gate)`` in the VJP would become the forward's
    sigmoid, shared by both passes and so left out of every fused kernel (a scalar op of its own)."""
    gate, x = mx.random.normal((4, 8)), mx.random.normal((4, 8))
    mx.eval(gate, x)
    step = mx.compile(mx.value_and_grad(lambda a, b: cpu_ops.silu_mul(a, b).sum(), argnums=(0, 1)))
    value, (d_gate, d_x) = step(gate, x)
    dot = tmp_path / "graph.dot"
    mx.export_to_dot(str(dot), value, d_gate, d_x)
    ops = re.findall(r'label ="([^"]+)"', dot.read_text())
    assert "Sigmoid" not in ops, ops
    assert sum("Sigmoid" in op or "Exp" in op for op in ops if op.startswith("Compiled")) == 2, ops


def test_kernel_cache_is_per_host_and_per_flags() -> None:
    base: dict[str, Any] = {"host": "node1", "cpu": "flags: avx2", "compiler_version": "g++ 12",
                            "flags": FLAGS, "mlx_version": "0.32.4"}
    key = cache_key(**base)
    assert key.startswith("node1-")
    for change in ({"host": "node2"}, {"cpu": "flags: avx512f"}, {"flags": FLAGS[:1]},
                   {"compiler_version": "g++ 13"}, {"mlx_version": "0.33.0"}):
        assert cache_key(**{**base, **change}) != key, change
    assert cache_key(**base) == key


def test_without_a_compiler_the_plain_path_with_the_reason(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ here
    setup = prepare_jit(tmp_path / "cache")
    assert not setup.active and setup.reason == "no g++ on PATH: MLX cannot fuse CPU kernels"
    assert os.environ["PATH"] == str(tmp_path) and not (tmp_path / "cache").exists()


def test_a_compiler_refusing_the_flags_leaves_the_plain_path(tmp_path: Path) -> None:
    setup = prepare_jit(tmp_path / "cache", flags=("-mno-such-flag-anywhere",))
    assert not setup.active and "-mno-such-flag-anywhere failed" in setup.reason


JIT_SCRIPT = """
import sys
sys.path.insert(0, {scripts!r})
from tubetune.train.jit import prepare_jit
from pathlib import Path
setup = prepare_jit(Path({root!r}))
assert setup.active, setup.reason
# again, with the wrapper now first on PATH (as in a job started by this process): the real compiler
again = prepare_jit(Path({root!r}))
assert again.active and again.compiler == setup.compiler and again.cache_dir == setup.cache_dir, again
from tubetune.mlxrt import mx
fused = mx.compile(lambda a, b: mx.exp(a - b) * a + b)
a, b = mx.arange(1000, dtype=mx.float32) / 1000, mx.ones(1000)
out = fused(a, b)
mx.eval(out)
print(setup.cache_dir)
"""


def test_mlx_builds_its_kernels_with_the_wrapper_into_the_cache(tmp_path: Path) -> None:
    code = JIT_SCRIPT.format(scripts=str(ROOT / "scripts"), root=str(tmp_path / "jit"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    cache_dir = Path(done.stdout.strip().splitlines()[-1])
    assert cache_dir.parent == tmp_path / "jit"
    libraries = list(cache_dir.glob("mlx/*/cpu/lib*.so"))
    assert libraries, "MLX built no kernel under the cache dir"
    log = (cache_dir / "compile.log").read_text()
    assert all(flag in log for flag in FLAGS) and str(cache_dir) in log


STEP_SCRIPT = """
import importlib.util, json, sys
sys.path.insert(0, {scripts!r})
from tubetune.train.jit import prepare_jit
from pathlib import Path
setup = prepare_jit(Path({root!r}))
assert setup.active, setup.reason
spec = importlib.util.spec_from_file_location("cpu_ops_test", {test!r})
test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(test)
model = test._tiny_llama()
eager_loss, eager = test._loss_and_grads(model, composed=False, compiled=False)
loss, grads = test._loss_and_grads(model, composed=True, compiled=True)
worst = max(float(abs(grads[k] - eager[k]).max() / (abs(eager[k]).max())) for k in eager)
print(json.dumps({{"loss": loss, "eager_loss": eager_loss, "worst_relative": worst}}))
"""


def test_composed_step_built_with_the_jit_flags_matches_mlx_lm_eager(tmp_path: Path) -> None:
    code = STEP_SCRIPT.format(scripts=str(ROOT / "scripts"), root=str(tmp_path / "jit"), test=__file__)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["loss"] == pytest.approx(result["eager_loss"], rel=1e-6)
    assert result["worst_relative"] < 1e-4
    assert list((tmp_path / "jit").glob("*/mlx/*/cpu/lib*.so"))
