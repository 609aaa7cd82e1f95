"""OpenBLAS threads during training: the rule's threads, minus the cores other processes keep busy
(:mod:`tubetune.cores`: each of the thousands of small matmuls of a step would otherwise stall while
another process holds one of the cores); and one thread while another library's threads run in the same
process (:func:`openblas_threads`)."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tubetune.cores import free_threads

logger = logging.getLogger(__name__)


def _openblas_function(name: str) -> Any:
    """A function of the OpenBLAS loaded globally by tubetune.mlxrt, or None (macOS, reference BLAS)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None


class BlasThreads:
    """Keeps OpenBLAS at ``requested`` threads minus the cores other processes keep busy.

    :meth:`adjust` is called at the start and every few training steps; without OpenBLAS
    (macOS, reference BLAS) or with ``requested`` None it does nothing.
    """

    def __init__(self, requested: int | None) -> None:
        self._set = _openblas_function("openblas_set_num_threads")
        get = _openblas_function("openblas_get_num_threads")
        self.current: int | None = int(get()) if get is not None else None
        self.wanted = requested
        self.requested = requested if self._set is not None else None
        self.start: int | None = None
        self.changes = 0

    def adjust(self) -> int | None:
        if self.requested is not None:
            self._choose(self.requested)
        if self.start is None:
            self.start = self.current
        return self.current

    def _choose(self, requested: int) -> None:
        chosen = free_threads(requested)
        if chosen == self.current:
            return
        if self.current is not None and chosen < requested:
            logger.info("OpenBLAS: %d thread(s) instead of %d while other processes keep cores busy",
                        chosen, requested)
        elif self.start is not None:  # not the first setting
            logger.info("OpenBLAS: back to %d threads", chosen)
        self._set(chosen)
        self.current = chosen
        self.changes += 1

    def record(self) -> dict[str, int | None]:
        """``{"requested", "start", "end", "changes"}`` for summary.json."""
        return {"requested": self.wanted, "start": self.start, "end": self.current, "changes": self.changes}


@contextmanager
def openblas_threads(threads: int) -> Iterator[int | None]:
    """OpenBLAS at ``threads`` threads inside the block, as before after it; yields the previous count
    (None without OpenBLAS: nothing to do).

    For another library's threads in the same process (torch's OpenMP pool): OpenBLAS workers keep
    spinning for a while after each call, and on a 2-core machine a greedy decode in transformers after
    an MLX run took 14.4 s at 2 OpenBLAS threads and 3.9 s at 1.
    """
    set_threads = _openblas_function("openblas_set_num_threads")
    get_threads = _openblas_function("openblas_get_num_threads")
    if set_threads is None or get_threads is None:
        yield None
        return
    previous = int(get_threads())
    set_threads(threads)
    try:
        yield previous
    finally:
        set_threads(previous)
