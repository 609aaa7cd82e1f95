"""On a CPU device, training keeps MLX's freed buffers for reuse instead of MLX's 32 MB default."""

from __future__ import annotations

from tubetune.mlxrt import mx

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlx_lm.tuner.trainer as mlx_trainer
import pytest

from tubetune.config import section_config
from tubetune.settings import settings_from
from tubetune.train import runner
from tubetune.train.buffer_cache import cache_limit_gb, cpu_buffer_cache
from tubetune.train.settings import TrainSettings

BUFFER = 100_000_000  # bytes: more than MLX's CPU default cache limit


def _limit() -> int:
    previous = mx.set_cache_limit(0)
    mx.set_cache_limit(previous)
    return previous


def _free_one_buffer() -> None:
    buffer = mx.ones((BUFFER // 4,))
    mx.eval(buffer)
    del buffer


def test_freed_buffers_are_kept_inside_the_block_and_released_after() -> None:
    before = _limit()
    mx.clear_cache()
    with cpu_buffer_cache(0.5, gpu=False) as limit:
        assert limit == 0.5 and _limit() == 500_000_000
        _free_one_buffer()
        assert mx.get_cache_memory() >= BUFFER
    assert _limit() == before
    assert mx.get_cache_memory() < BUFFER


def test_without_the_block_a_large_freed_buffer_is_not_kept() -> None:
    """What the block changes: MLX's own CPU limit does not keep a step's large buffers."""
    mx.clear_cache()
    _free_one_buffer()
    assert mx.get_cache_memory() < BUFFER


def test_a_gpu_device_or_no_room_for_a_cache_changes_nothing() -> None:
    before = _limit()
    for limit_gb, gpu in ((0.5, True), (0.0, False)):
        with cpu_buffer_cache(limit_gb, gpu=gpu) as limit:
            assert limit is None and _limit() == before


def test_mlx_lm_keeps_the_cache_between_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """mlx-lm's ``train()`` empties MLX's cache after every step unless it holds more than
    ``clear_cache_threshold`` bytes: the runner passes the cache limit."""
    seen: list[int] = []
    monkeypatch.setattr(mlx_trainer, "train",
                        lambda **kwargs: seen.append(kwargs["args"].clear_cache_threshold))
    settings = settings_from(TrainSettings, section_config("train", {"iters": 4, "profile": None}), "train")
    plan: Any = SimpleNamespace(iters=4, train_set=None)
    outputs: Any = SimpleNamespace(last=Path("last.safetensors"))
    for cache_gb in (2.5, None):
        runner._train(None, None, plan, settings, outputs, lambda: None, iter, None,  # type: ignore[arg-type]
                      cache_gb)
    assert seen == [2_500_000_000, 0]


def test_the_cache_holds_one_step_and_leaves_room_under_the_memory_limit() -> None:
    assert cache_limit_gb(3.0, 20.0) == 3.0
    assert cache_limit_gb(3.0, None) == 3.0
    assert cache_limit_gb(12.0, 16.0) == 4.0  # estimate + cache stay within the limit
    assert cache_limit_gb(17.0, 16.0) == 0.0  # over the limit already (training refuses to start)
