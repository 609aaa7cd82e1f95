"""OpenBLAS threads during training: the rule's threads, minus the cores other processes keep busy.

OpenBLAS splits every matmul between its threads and waits for the slowest; when another process
holds one of the cores, each of the thousands of small matmuls of a step stalls for a scheduler time
slice (measured on 2 cores: 2 threads 21 tokens/s vs 1 thread 93 tokens/s with one other busy
process, but 128 vs 96 tokens/s on an idle machine).
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _openblas_function(name: str) -> Any:
    """A function of the OpenBLAS loaded globally by tubetune.mlxrt, or None (macOS, reference BLAS)."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None


def other_running_processes(samples: int = 5, interval: float = 0.02) -> float:
    """Mean number of running threads of *other* processes (Linux ``/proc``), sampled briefly."""
    own = str(os.getpid())
    counts = []
    for index in range(samples):
        running = 0
        for stat in Path("/proc").glob("[0-9]*/task/*/stat"):
            if stat.parts[2] == own:
                continue
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            running += state == "R"
        counts.append(running)
        if index + 1 < samples:
            time.sleep(interval)
    return sum(counts) / len(counts)


def choose_blas_threads(requested: int, cores: int | None = None, busy: float | None = None) -> int:
    """OpenBLAS threads to train with: ``requested``, minus the cores other running processes occupy."""
    cores = cores or os.cpu_count() or 1
    busy = other_running_processes() if busy is None else busy
    free = max(1, cores - round(busy))
    return max(1, min(requested, free))


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
        chosen = choose_blas_threads(requested)
        if chosen == self.current:
            return
        if self.current is not None and chosen < requested:
            logger.info("OpenBLAS: %d thread(s) instead of %d while other processes keep cores busy",
                        chosen, requested)
        elif self.current is not None:
            logger.info("OpenBLAS: back to %d threads", chosen)
        self._set(chosen)
        self.current = chosen
        self.changes += 1

    def record(self) -> dict[str, int | None]:
        """``{"requested", "start", "end", "changes"}`` for summary.json."""
        return {"requested": self.wanted, "start": self.start, "end": self.current, "changes": self.changes}
