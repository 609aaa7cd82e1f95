"""Threads for CPU-bound work on a shared machine: the job's threads minus the cores other processes
keep busy.

A kernel that splits every step between its threads and waits for the slowest (OpenBLAS matmuls,
llama.cpp token generation) stalls for a scheduler time slice whenever another process holds one of
the cores it runs on. Measured on 2 cores with one other busy process: OpenBLAS 2 threads 21 tokens/s
vs 1 thread 93 (idle: 128 vs 96); llama.cpp 2 threads about 3 tokens/s vs 1 thread about 12 (idle: ~96
vs ~48, ``bench/llama_threads.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def other_running_processes(samples: int = 5, interval: float = 0.02) -> float:
    """Mean number of running threads of *other* processes (Linux ``/proc``; 0 elsewhere), sampled briefly."""
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


def free_threads(requested: int, cores: int | None = None, busy: float | None = None) -> int:
    """``requested`` threads, minus the cores other running processes occupy (``busy``: their running
    threads, measured when None); at least 1."""
    cores = cores or os.cpu_count() or 1
    busy = other_running_processes() if busy is None else busy
    free = max(1, cores - round(busy))
    return max(1, min(requested, free))


class LlamaThreads:
    """llama.cpp threads of a loaded model (llama-cpp-python ``Llama``), set before each generation to
    ``limit`` (the job's threads) minus the cores other processes keep busy; ``probe`` counts their
    running threads."""

    def __init__(
        self, limit: int, probe: Callable[[], float] = other_running_processes, cores: int | None = None
    ) -> None:
        self.limit = max(1, limit)
        self.probe = probe
        self.cores = cores
        self.current: int | None = None

    def choose(self) -> int:
        return free_threads(self.limit, self.cores, busy=self.probe())

    def adjust(self, llm: Any) -> int:
        """Set the model's threads for the next generation (llama_set_n_threads) when the choice changed."""
        import llama_cpp

        chosen = self.choose()
        if chosen != self.current:
            llama_cpp.llama_set_n_threads(llm.ctx, chosen, chosen)
            if self.current is not None:
                logger.info("llama.cpp: %d thread(s) of %d (other processes keep %s busy)", chosen,
                            self.limit, "cores" if chosen < self.limit else "no core")
            self.current = chosen
        return chosen
