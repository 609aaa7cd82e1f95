"""Data-parallel training on a CPU device: one process per core, each on part of every batch.

MLX runs element-wise ops (activations, softmax, the optimizer) on one thread per process, so a single
training process leaves all cores but one idle for part of every step (measured on 2 cores: 14.5% of
the step in OpenBLAS's second thread waiting). With ``processes`` training processes, each with
``threads // processes`` OpenBLAS threads, that work runs on every core.

The rule's process is rank 0: :class:`Workers` starts ranks 1.. as ``python -m tubetune.train.worker``
(the same run, its outputs in a scratch directory that is removed afterwards) and joins them in an
MLX ``ring`` group over 127.0.0.1. mlx-lm's trainer gives each rank ``batch_size / processes`` examples
of every batch (the same batch order: every rank seeds NumPy alike) and sums the gradients; the
validation loss is summed over the ranks. :func:`global_token_mean` makes each rank's training loss
its share of the whole batch's token mean, so the update and the reported loss are the ones of a
single process up to float rounding.

A worker that fails stops the run with its last log lines in the rule's log; a rank-0 process that
dies (a killed job) takes its workers with it on Linux (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

from tubetune.mlxrt import mx

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import wraps
from pathlib import Path
from types import TracebackType
from typing import Any

from tubetune.errors import ConfigError, TubetuneError
from tubetune.train.jit import cache_root

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
RANK_ENV = "MLX_RANK"
HOSTFILE_ENV = "MLX_HOSTFILE"
LOG_TAIL = 20  # lines of a failed worker's log copied into the rule's log
FINISH_TIMEOUT_S = 600.0  # how long rank 0 waits for the workers after its own last step


class WorkerFailed(TubetuneError):
    """A training worker process ended with an error."""


@dataclass(frozen=True)
class Processes:
    """How many training processes, with how many OpenBLAS threads each, and why; ``threads``: the
    threads of the run they were chosen for."""

    count: int
    blas_threads: int | None
    reason: str
    threads: int | None = None

    def record(self) -> dict[str, Any]:
        """For summary.json."""
        return {"count": self.count, "threads": self.threads, "blas_threads_each": self.blas_threads,
                "reason": self.reason}


def choose_processes(
    setting: int | None,
    *,
    threads: int | None,
    batch_size: int,
    gpu: bool,
    fits: Callable[[int], bool],
) -> Processes:
    """The training processes for ``train.cpu_processes`` (``setting``; None: automatic).

    Automatic: one process on a GPU or when the rule's ``threads`` are unknown, else the most
    processes up to ``threads`` that divide ``batch_size`` and whose memory ``fits(count)`` allows.
    A number is checked against the batch size; on a GPU it is ignored.
    """
    chosen = _choose(setting, threads=threads, batch_size=batch_size, gpu=gpu, fits=fits)
    return replace(chosen, threads=threads)


def _choose(setting: int | None, *, threads: int | None, batch_size: int, gpu: bool,
            fits: Callable[[int], bool]) -> Processes:
    if gpu:
        return Processes(1, threads, "GPU device: one process")
    if setting is not None:
        if batch_size % setting:
            raise ConfigError(
                f"config error: train.cpu_processes {setting} does not divide train.batch_size {batch_size}: "
                "each process takes an equal part of every batch"
            )
        return Processes(setting, _threads_each(threads, setting), "train.cpu_processes")
    if threads is None or threads < 2:
        return Processes(1, threads, "one core" if threads == 1 else "threads unknown")
    for count in range(min(threads, batch_size), 1, -1):
        if batch_size % count == 0 and fits(count):
            return Processes(count, _threads_each(threads, count),
                             f"{threads} cores, batch {batch_size}: {batch_size // count} example(s) each")
    return Processes(1, threads, "the memory limit allows one copy of the model"
                     if any(batch_size % n == 0 for n in range(2, threads + 1)) else
                     f"batch {batch_size} does not split over {threads} cores")


def _threads_each(threads: int | None, count: int) -> int | None:
    return None if threads is None else max(1, threads // count)


def global_token_mean(loss: Callable[..., tuple[mx.array, mx.array]],
                      group: Any) -> Callable[..., tuple[mx.array, mx.array]]:
    """``loss`` (a token mean and the token count of this rank's examples) rescaled to this rank's
    share of the mean over all ranks' tokens, times the number of ranks.

    mlx-lm averages the ranks' gradients and losses; averaged, these give the gradient and loss of the
    token mean over the whole batch, as one process would compute them.
    """
    size = group.size()

    @wraps(loss)
    def shared(*args: Any) -> tuple[mx.array, mx.array]:
        value, tokens = loss(*args)
        total = mx.distributed.all_sum(mx.stop_gradient(tokens), group=group, stream=mx.cpu)
        return value * (tokens.astype(mx.float32) * size / total.astype(mx.float32)), tokens

    return shared


# ------------------------------------------------------------------------------------ processes


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to repeat the run: written as JSON for ``python -m tubetune.train.worker``."""

    train: str
    valid: str
    base: str
    settings: dict[str, Any]
    rank: int
    processes: int
    blas_threads: int | None
    outputs: str  # the directory for its own (discarded) outputs
    ready: str  # the file it creates when it is about to join the group

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=1), encoding="utf-8")

    @classmethod
    def read(cls, path: str | Path) -> WorkerSpec:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports on 127.0.0.1 that are free now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_hostfile(path: Path, ports: Sequence[int]) -> None:
    """MLX's ring hostfile: per rank, the list of its addresses."""
    path.write_text(json.dumps([[f"{HOST}:{port}"] for port in ports]), encoding="utf-8")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def join_group(size: int, ready: Path | None = None) -> Any:
    """This process's ring group of ``size`` ranks, from ``MLX_RANK`` and ``MLX_HOSTFILE``; a worker
    first creates its ``ready`` file. Blocks, holding Python's GIL, until every rank has joined."""
    if ready is not None:
        ready.touch()
    group = mx.distributed.init(backend="ring", strict=True)
    check_default_group(size)
    return group


def check_default_group(size: int) -> None:
    """Raise unless MLX's default group (the one mlx-lm's trainer uses) has ``size`` processes.

    MLX keeps the first group a process forms for the life of the process: a process that trained
    once cannot train again with another number of processes.
    """
    current = mx.distributed.init().size()
    if current != size:
        raise TubetuneError(
            f"this process already trained in a group of {current} process(es) and MLX keeps it; this run "
            f"needs {size}: run each training in its own process (as the train rule does)"
        )


def _last_line(path: Path) -> str:
    return _tail(path, 1).removeprefix("tubetune ERROR: ")


def _tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


class Workers:
    """Ranks 1..count-1 of a run as child processes, and rank 0 (this process) joined to their group.

    Use as a context manager around the training: on entry the workers start, rank 0 waits until each
    has loaded the model and is about to join (its ``ready`` file), then the ring group forms; on a
    normal exit rank 0 waits for them, on an error it kills them. The scratch directory (hostfile,
    specs, worker outputs and logs) is removed in both cases. A worker that exits with an error before
    the group forms raises :class:`WorkerFailed` (forming the group blocks without a timeout, holding the
    GIL); one that fails while training ends this process from a watcher thread (MLX releases the GIL
    while it waits inside a collective operation, where rank 0 would otherwise wait forever). Either
    way the worker's last log lines go to the log.
    """

    def __init__(self, spec: Callable[[int], WorkerSpec], processes: Processes, scratch: Path,
                 *, python: str = sys.executable, poll_s: float = 0.5) -> None:
        self.spec = spec
        self.processes = processes
        self.scratch = scratch
        self.python = python
        self.poll_s = poll_s
        self.children: list[tuple[int, subprocess.Popen[bytes], Path]] = []
        self.group: Any = None
        self._finishing = threading.Event()
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> Workers:
        if self.scratch.exists():
            shutil.rmtree(self.scratch)
        self.scratch.mkdir(parents=True)
        count = self.processes.count
        hostfile = self.scratch / "hostfile.json"
        write_hostfile(hostfile, free_ports(count))
        package_root = str(Path(__file__).resolve().parents[2])
        for rank in range(1, count):
            spec_path = self.scratch / f"rank{rank}.json"
            self.spec(rank).write(spec_path)
            env = dict(os.environ)
            env.update({
                RANK_ENV: str(rank), HOSTFILE_ENV: str(hostfile),
                "PYTHONPATH": os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p),
                # MLX writes a kernel's source next to its library: one kernel cache per rank
                "TUBETUNE_JIT_CACHE": str(cache_root() / f"rank{rank}"),
            })
            if self.processes.blas_threads is not None:
                env["OPENBLAS_NUM_THREADS"] = str(self.processes.blas_threads)
            log = self.scratch / f"rank{rank}.log"
            with log.open("wb") as handle:
                child = subprocess.Popen(
                    [self.python, "-m", "tubetune.train.worker", str(spec_path)], env=env,
                    stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
            self.children.append((rank, child, log))
        logger.info("training in %d processes (%s), %s OpenBLAS thread(s) each; workers: pids %s",
                    count, self.processes.reason, self.processes.blas_threads or "default",
                    ", ".join(str(child.pid) for _, child, _ in self.children))
        try:
            self._wait_ready()
            self._watcher = threading.Thread(target=self._watch, name="train-workers", daemon=True)
            self._watcher.start()
            os.environ[RANK_ENV] = "0"
            os.environ[HOSTFILE_ENV] = str(hostfile)
            self.group = join_group(count)
        except BaseException:
            self._stop()
            raise
        return self

    @staticmethod
    def ready_path(scratch: Path, rank: int) -> Path:
        """The file worker ``rank`` creates when it is about to join the group."""
        return scratch / f"rank{rank}.ready"

    def _wait_ready(self) -> None:
        waiting = {rank for rank, _, _ in self.children}
        while waiting:
            failed = self._failed(exited=True)
            if failed is not None:
                rank, code, log = failed
                self._report(rank, code, log)
                raise WorkerFailed(f"training worker rank {rank} exited with code {code} before training "
                                   f"began: {_last_line(log)}")
            waiting = {rank for rank in waiting if not self.ready_path(self.scratch, rank).exists()}
            if waiting:
                time.sleep(self.poll_s / 5)

    @staticmethod
    def _report(rank: int, code: int, log: Path) -> None:
        logger.error("training worker rank %d exited with code %d; its last log lines:\n%s", rank, code,
                     _tail(log))

    def _failed(self, *, exited: bool = False) -> tuple[int, int, Path] | None:
        """The first worker that exited with an error (``exited``: that exited at all)."""
        for rank, child, log in self.children:
            code = child.poll()
            if code is not None and (code != 0 or exited):
                return rank, code, log
        return None

    def _watch(self) -> None:
        while not self._finishing.wait(self.poll_s):
            failed = self._failed()
            if failed is None:
                continue
            if self._finishing.is_set():
                return
            rank, code, log = failed
            self._report(rank, code, log)
            logger.error("training stopped: worker rank %d failed (see above)", rank)
            self._kill()
            logging.shutdown()
            os._exit(1)

    def _kill(self) -> None:
        for _, child, _ in self.children:
            if child.poll() is None:
                child.kill()
        for _, child, _ in self.children:
            child.wait()

    def _stop(self) -> None:
        self._finishing.set()
        self._kill()
        os.environ.pop(RANK_ENV, None)
        os.environ.pop(HOSTFILE_ENV, None)
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is not None:
            self._stop()
            return
        self._finishing.set()
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        try:
            for rank, child, log in self.children:
                try:
                    code = child.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    logger.warning("training worker rank %d still running %.0f s after the last step: "
                                   "stopped", rank, FINISH_TIMEOUT_S)
                    continue
                if code != 0:  # rank 0 completed every collective step: its outputs are whole
                    logger.warning("training worker rank %d exited with code %d after training; its last "
                                   "log lines:\n%s", rank, code, _tail(log))
        finally:
            self._stop()
