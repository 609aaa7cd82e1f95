"""Threads on a shared CPU: free cores, and llama.cpp answers whose threads follow them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tubetune.cores import LlamaThreads, free_threads, other_running_processes
from tubetune.evaluate.generate import GenerationSettings, generate_answers

PROMPT = [{"role": "user", "content": "How long should I preheat a Dutch oven for sourdough?"}]


def test_free_threads_leave_busy_cores_alone() -> None:
    assert free_threads(2, cores=2, busy=0.0) == 2
    assert free_threads(2, cores=2, busy=0.3) == 2
    assert free_threads(2, cores=2, busy=1.0) == 1
    assert free_threads(2, cores=2, busy=3.0) == 1
    assert free_threads(8, cores=16, busy=4.0) == 8
    assert free_threads(16, cores=16, busy=4.0) == 12


@pytest.fixture
def busy_process() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts running threads through /proc")
def test_a_busy_process_counts_as_running(busy_process: subprocess.Popen[bytes]) -> None:
    # a busy loop is always running or runnable (state R), whatever else the machine does
    assert other_running_processes(samples=10, interval=0.02) >= 1.0


@pytest.mark.slow
def test_answers_follow_the_free_cores_and_do_not_depend_on_them(bundled_gguf: Path) -> None:
    """Threads are chosen before each answer from the busy cores; the answer is the same with 1 or 2."""
    settings = GenerationSettings(max_new_tokens=24, seed=0, n_ctx=512, repeat_penalty=1.0, n_threads=2)
    busy = iter([0.0, 0.0, 1.0, 1.0])  # the probe before loading, then before each of three answers
    threads = LlamaThreads(2, probe=lambda: next(busy), cores=2)
    run = generate_answers(bundled_gguf, [PROMPT, PROMPT, PROMPT], settings, threads=threads)
    assert [answer.threads for answer in run.answers] == [2, 1, 1]
    assert run.threads_used == {"1": 2, "2": 1}
    texts = {answer.text for answer in run.answers}
    assert len(texts) == 1 and texts != {""}, texts
    assert [a.to_json()["threads"] for a in run.answers] == [2, 1, 1]
