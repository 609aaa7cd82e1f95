"""Training on a CPU device: the element-wise work of a step as plain ops that ``mx.compile`` fuses.

On a CPU device, MLX runs element-wise primitives one at a time, scalar and single-threaded, and the
``mx.fast`` kernels (attention, RMSNorm) fall back to a sequence of such primitives. Inside the compiled
training step, chains of plain element-wise ops become one JIT-built C++ kernel per chain
(:mod:`tubetune.train.jit` builds them with ``-march=native``). Three places of a Llama step are
rewritten so that their work lands in such chains; each computes the same function:

* :func:`silu_mul` (SwiGLU, ``silu(gate) * x``): a custom VJP that recomputes the sigmoid. mlx-lm's
  compiled ``swiglu`` keeps the sigmoid for its backward pass, and MLX never fuses an op whose output is
  reused, so the sigmoid ran on its own. The VJP writes the sigmoid as ``1 / (1 + exp(-gate))``: a
  ``sigmoid(gate)`` there would be the same expression as the forward's, which ``mx.compile`` merges
  into one shared (so unfused) op, and the step would again run a scalar sigmoid over every MLP
  activation on its own (6% of the CPU samples of a SmolLM2 step, in ``exp`` and libm ``fmaf`` calls).
* :func:`cross_entropy`: ``logsumexp`` written out with a ``stop_gradient`` maximum. The ``logsumexp``
  primitive's VJP recomputes a whole softmax over the vocabulary; here the backward pass reuses the
  forward's exponentials.
* :func:`attention`: causal attention as matmuls, an additive mask and a composed softmax (the query
  heads of a KV head stacked into one matrix product), instead of the fallback of
  ``mx.fast.scaled_dot_product_attention``.

:func:`composed_ops` swaps the first and the last into ``mlx_lm.models.llama`` while training runs;
the loss functions take :func:`cross_entropy` as an argument. Generation with a KV cache, attention
sinks or a quantized cache keeps mlx-lm's own attention.
"""

from __future__ import annotations

from tubetune.mlxrt import mx

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, cast

import mlx.nn as nn
import mlx_lm.models.llama as llama

CrossEntropy = Callable[[mx.array, mx.array], mx.array]


@mx.custom_function
def _silu_mul(gate: mx.array, x: mx.array) -> mx.array:
    return gate * mx.sigmoid(gate) * x


@_silu_mul.vjp
def _silu_mul_vjp(primals: tuple[mx.array, mx.array], cotangent: mx.array,
                  output: mx.array) -> tuple[mx.array, mx.array]:
    del output
    gate, x = primals
    sigmoid = 1 / (1 + mx.exp(-gate))
    silu = gate * sigmoid
    # d silu / d gate = sigmoid + silu * (1 - sigmoid)
    return cotangent * x * (sigmoid + silu * (1 - sigmoid)), cotangent * silu


# Not shapeless: MLX cannot infer the output shapes of a custom function for a new input shape.
silu_mul: Callable[[mx.array, mx.array], mx.array] = mx.compile(cast(Any, _silu_mul))
"""``silu(gate) * x`` (mlx-lm's ``swiglu``) whose backward pass recomputes the sigmoid."""


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Per-position cross-entropy, the value of ``nn.losses.cross_entropy(logits, targets)``."""
    top = mx.stop_gradient(logits.max(axis=-1, keepdims=True))
    logsumexp = mx.log(mx.exp(logits - top).sum(axis=-1)) + top.squeeze(-1)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return logsumexp - picked


def plain_cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """mlx's ``nn.losses.cross_entropy`` (the ``logsumexp`` primitive: one fused kernel on a GPU)."""
    return nn.losses.cross_entropy(logits, targets)


def _causal_mask(length: int, repeats: int, dtype: mx.Dtype) -> mx.array:
    """``[repeats * length, length]``: 0 where row ``i`` (position ``i % length``) may attend, else -inf."""
    rows = mx.arange(repeats * length) % length
    allowed = rows[:, None] >= mx.arange(length)[None]
    return mx.where(allowed, mx.array(0.0, dtype), mx.array(-mx.inf, dtype))


def _causal_or_none(mask: mx.array | str | None) -> bool:
    return mask is None or (isinstance(mask, str) and mask == "causal")


def attention(queries: mx.array, keys: mx.array, values: mx.array, cache: Any, scale: float,
              mask: mx.array | str | None, sinks: mx.array | None = None) -> mx.array:
    """mlx-lm's ``scaled_dot_product_attention`` for training: no cache, a causal or no mask, plain ops.

    ``queries`` is ``[B, H, L, D]``, ``keys`` / ``values`` ``[B, K, L, D]`` with ``H`` a multiple of
    ``K`` (grouped queries). A cache, attention sinks or a mask array go to mlx-lm's own function.
    """
    if cache is not None or sinks is not None or not _causal_or_none(mask):
        return cast(mx.array, _MLX_LM["scaled_dot_product_attention"](
            queries, keys, values, cache=cache, scale=scale, mask=mask, sinks=sinks))
    batch, heads, length, dim = queries.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    # The queries sharing a KV head are stacked along the rows: one [group * L, D] x [D, L] product per
    # KV head instead of `group` small ones.
    stacked = (queries * scale).reshape(batch, kv_heads, group * length, dim)
    scores = stacked @ keys.swapaxes(-1, -2)
    if mask is not None:
        scores = scores + _causal_mask(length, group, scores.dtype)
    top = mx.stop_gradient(scores.max(axis=-1, keepdims=True))
    weights = mx.exp(scores - top)
    weights = weights / weights.sum(axis=-1, keepdims=True)
    return (weights @ values).reshape(batch, heads, length, dim)


_MLX_LM: dict[str, Any] = {name: getattr(llama, name) for name in ("swiglu", "scaled_dot_product_attention")}
_COMPOSED: dict[str, Any] = {"swiglu": silu_mul, "scaled_dot_product_attention": attention}


@contextmanager
def composed_ops() -> Iterator[None]:
    """While inside: mlx-lm's Llama blocks use :func:`silu_mul` and :func:`attention`."""
    saved = {name: getattr(llama, name) for name in _COMPOSED}
    for name, function in _COMPOSED.items():
        setattr(llama, name, function)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(llama, name, function)


def with_cross_entropy(loss: Callable[..., tuple[mx.array, mx.array]],
                       ce: CrossEntropy) -> Callable[..., tuple[mx.array, mx.array]]:
    """``loss`` (a function with a ``cross_entropy=`` keyword) bound to ``ce``, keeping its name."""

    @wraps(loss)
    def bound(*args: Any) -> tuple[mx.array, mx.array]:
        return loss(*args, cross_entropy=ce)

    return bound
