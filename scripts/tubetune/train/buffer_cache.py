"""MLX's buffer cache on a CPU device: freed buffers kept for the next allocation of the same size.

On a CPU device MLX keeps at most 32 MB of freed buffers (``mx.set_cache_limit`` returns that default);
every larger buffer of a training step (logits, their gradient, the activations of each layer) goes
back to the C library, which returns it to the kernel, and the next step gets fresh pages that the
kernel zeroes one page fault at a time: on a 2-core x86 machine, 12% of the CPU samples (``perf
record``) of a short SmolLM2 run, 4 x 256 tokens a step, were the kernel's ``clear_page``. Training
keeps up to the run's memory estimate (:func:`cache_limit_gb`: the buffers one step frees; batches are
padded to a few lengths, so their sizes repeat) and mlx-lm is told not to empty the cache after each
step. A GPU device keeps its own default (the memory limit).
"""

from __future__ import annotations

from tubetune.mlxrt import mx

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tubetune.train.memory import GB

logger = logging.getLogger(__name__)


def cache_limit_gb(estimate_gb: float, memory_limit_gb: float | None) -> float:
    """The run's memory estimate, less where the estimate plus the cache would pass the memory limit."""
    if memory_limit_gb is None:
        return estimate_gb
    return max(0.0, min(estimate_gb, memory_limit_gb - estimate_gb))


@contextmanager
def cpu_buffer_cache(limit_gb: float, *, gpu: bool) -> Iterator[float | None]:
    """Inside the block, on a CPU device, MLX keeps up to ``limit_gb`` of freed buffers for reuse.

    Yields the limit set (None when nothing was changed: a GPU device or no room for a cache); the
    previous limit is restored afterwards and the cache emptied.
    """
    if gpu or limit_gb <= 0:
        yield None
        return
    previous = mx.set_cache_limit(int(limit_gb * GB))
    logger.info("CPU buffer cache: up to %.1f GB of freed buffers reused (MLX's CPU default: %.0f MB)",
                limit_gb, previous / 1e6)
    try:
        yield limit_gb
    finally:
        mx.set_cache_limit(previous)
        mx.clear_cache()
