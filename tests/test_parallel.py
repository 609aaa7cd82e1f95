"""Data-parallel CPU training (tubetune.train.parallel): the choice of processes, and real runs of two
processes joined over 127.0.0.1 against one process, a failing worker and a killed rule process."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from test_train import load_config
from tubetune.errors import ConfigError
from tubetune.settings import settings_from
from tubetune.train.memory import GB, MemoryEstimate, MemoryLimitError, check_memory
from tubetune.train.parallel import Processes, choose_processes
from tubetune.train.settings import TrainSettings

ROOT = Path(__file__).resolve().parents[1]


def _choose(setting: int | None = None, *, threads: int | None = 2, batch_size: int = 4, gpu: bool = False,
            fits: Any = lambda n: True) -> Processes:
    return choose_processes(setting, threads=threads, batch_size=batch_size, gpu=gpu, fits=fits)


def test_one_process_per_core_as_the_batch_allows() -> None:
    two = _choose(threads=2, batch_size=4)
    assert (two.count, two.blas_threads) == (2, 1)
    eight = _choose(threads=8, batch_size=4)  # no more processes than examples: the rest are BLAS threads
    assert (eight.count, eight.blas_threads) == (4, 2)
    three = _choose(threads=3, batch_size=4)  # 3 does not divide 4
    assert (three.count, three.blas_threads) == (2, 1)
    assert _choose(threads=2, batch_size=1).count == 1
    assert "does not split" in _choose(threads=2, batch_size=3).reason


def test_one_process_on_a_gpu_one_core_or_unknown_threads() -> None:
    assert _choose(gpu=True).count == 1
    assert _choose(4, gpu=True).count == 1  # the setting is for CPU devices only
    assert _choose(threads=1).count == 1
    assert _choose(threads=None).count == 1


def test_fewer_processes_when_their_model_copies_do_not_fit() -> None:
    four = _choose(threads=4, batch_size=4, fits=lambda n: n <= 2)
    assert (four.count, four.blas_threads) == (2, 2)
    single = _choose(threads=2, fits=lambda n: n == 1)
    assert single.count == 1 and "memory limit" in single.reason


def test_a_set_process_count_must_divide_the_batch() -> None:
    assert _choose(1, threads=2).count == 1
    four = _choose(4, threads=8, batch_size=8)
    assert (four.count, four.blas_threads) == (4, 2)
    with pytest.raises(ConfigError, match=r"train\.cpu_processes 3 does not divide train\.batch_size 4"):
        _choose(3)


def test_the_memory_check_counts_every_process() -> None:
    estimate = MemoryEstimate(weights=int(3 * GB), trainable=0, activations=int(GB), logits=0)
    check_memory(estimate, 8.0, grad_checkpoint=True, processes=2)
    with pytest.raises(MemoryLimitError, match=r"about 12\.0 GB in 3 processes.*lower train\.cpu_processes"):
        check_memory(estimate, 8.0, grad_checkpoint=True, processes=3)


def test_the_schema_takes_null_or_a_count(tmp_path: Path) -> None:
    assert load_config()["train"]["cpu_processes"] is None
    assert load_config(cpu_processes=2)["train"]["cpu_processes"] == 2
    with pytest.raises(Exception, match="cpu_processes"):
        load_config(cpu_processes=0)


# --------------------------------------------------------------------------------------- real runs


def _settings(**overrides: Any) -> TrainSettings:
    # The answers are the trained tokens (mask_prompt): the two halves of a batch hold different numbers
    # of them, so an average of per-process means would differ from the mean over the batch.
    values = {"iters": 4, "steps_per_eval": 2, "steps_per_report": 2, "batch_size": 4, "seed": 5,
              "learning_rate": 1e-3, "mask_prompt": True, **overrides}
    return settings_from(TrainSettings, load_config(profile="tiny-test", **values)["train"], "train")


def _run(base: Path, data: Path, out: Path, settings: TrainSettings, threads: int) -> dict[str, Any]:
    from tubetune.train.reproduce import run_layout
    from tubetune.train.runner import run_training

    summary = run_training(data / "train.jsonl", data / "valid.jsonl", base, run_layout(out), settings,
                           blas_threads=threads)
    return summary


def _run_args(base: Path, data: Path, out: Path, settings: TrainSettings) -> dict[str, Any]:
    return {"train": str(data / "train.jsonl"), "valid": str(data / "valid.jsonl"), "base": str(base),
            "settings": dataclasses.asdict(settings), "out": str(out)}


def test_a_process_trains_with_one_group_size() -> None:
    """MLX keeps a process's first group (here the single process of this test session): a run that
    needs another size stops with one line instead of training in the wrong group."""
    from tubetune.errors import TubetuneError
    from tubetune.train.parallel import check_default_group

    check_default_group(1)
    with pytest.raises(TubetuneError, match=r"a group of 1 process\(es\) and MLX keeps it.*its own process"):
        check_default_group(2)


def _rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_as_one(base_model_dir: Path, chat_dataset_dir: Path, tmp_path: Path) -> None:
    """Two ranks on halves of each batch: the losses and the adapter of a single process."""
    import mlx.core as mx

    single = _run(base_model_dir, chat_dataset_dir, tmp_path / "one", _settings(cpu_processes=1), 2)
    # in a process of its own, as in the train rule: MLX keeps a process's first group
    args = _run_args(base_model_dir, chat_dataset_dir, tmp_path / "two", _settings())
    done = subprocess.run([sys.executable, "-c", RUN_SCRIPT, json.dumps(args)], capture_output=True,
                          text=True, timeout=900, env=_python_env(), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert single["processes"]["count"] == 1
    assert double["processes"] == {"count": 2, "threads": 2, "blas_threads_each": 1,
                                   "reason": "2 cores, batch 4: 2 example(s) each"}
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [(r["kind"], r["iteration"]) for r in one] == [(r["kind"], r["iteration"]) for r in two]
    for a, b in zip(one, two, strict=True):
        key = "val_loss" if a["kind"] == "val" else "train_loss"
        assert b[key] == pytest.approx(a[key], abs=2e-5), (a, b)
        if a["kind"] == "train":
            assert b["trained_tokens"] == a["trained_tokens"]  # every rank's tokens are counted
    assert one[-1]["val_loss"] < one[0]["val_loss"]  # the comparison is of a run that learned
    weights_one = mx.load(str(tmp_path / "one" / "adapters" / "last.safetensors"))
    weights_two = mx.load(str(tmp_path / "two" / "adapters" / "last.safetensors"))
    assert isinstance(weights_one, dict) and isinstance(weights_two, dict)
    assert weights_one.keys() == weights_two.keys()
    # Adam scales each update to about the learning rate whatever the gradient's size, so rounding moves
    # the weights more than the losses: measured 5.7e-5 at most; 1.4e-2 with each rank's own token mean.
    for name, value in weights_one.items():
        assert float(mx.abs(weights_two[name] - value).max()) < 5e-4, name
    assert not (tmp_path / "two" / ".workers").exists()  # the workers' scratch is gone


WORKER_SCRIPT = """
import sys
from pathlib import Path
from tubetune.logs import run_step
from tubetune.train.parallel import Processes, WorkerSpec, Workers
import json

args = json.loads(sys.argv[1])
scratch = Path(args["scratch"])

def spec(rank):
    return WorkerSpec(train=args["train"], valid=args["valid"], base=args["base"], settings=args["settings"],
                      rank=rank, processes=2, blas_threads=1, outputs=str(scratch / f"rank{rank}"),
                      ready=str(Workers.ready_path(scratch, rank)))

def step():
    with Workers(spec, Processes(2, 1, "test"), scratch):
        print("joined", flush=True)

run_step(None, step)
"""


def _python_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT / "scripts"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.slow
def test_a_failing_worker_stops_the_run_with_its_error(
    base_model_dir: Path, chat_dataset_dir: Path, tmp_path: Path
) -> None:
    """Rank 0 waits for the group to form; the worker fails on its input: rank 0 exits with the
    worker's one-line error in its log instead of waiting forever."""
    args = {"train": str(tmp_path / "missing.jsonl"), "valid": str(chat_dataset_dir / "valid.jsonl"),
            "base": str(base_model_dir), "settings": dataclasses.asdict(_settings()),
            "scratch": str(tmp_path / "scratch")}
    done = subprocess.run([sys.executable, "-c", WORKER_SCRIPT, json.dumps(args)], capture_output=True,
                          text=True, timeout=300, env=_python_env(), check=False)
    assert done.returncode == 1, done.stderr
    assert "joined" not in done.stdout
    assert "training worker rank 1 exited with code 1 before training began: " in done.stderr
    assert "missing.jsonl" in done.stderr.splitlines()[-1]  # the worker's own error line, passed on
    assert not (tmp_path / "scratch").exists()


RUN_SCRIPT = """
import sys
from pathlib import Path
from tubetune.logs import run_step
from tubetune.settings import settings_from
from tubetune.train.reproduce import run_layout
from tubetune.train.runner import run_training
from tubetune.train.settings import TrainSettings
import json

args = json.loads(sys.argv[1])
settings = settings_from(TrainSettings, args["settings"], "train")
run_step(None, lambda: run_training(args["train"], args["valid"], args["base"], run_layout(args["out"]),
                                    settings, blas_threads=2))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.is_file() and status.read_text().split(") ")[-1].startswith("Z"))


def _start_long_run(base: Path, data: Path, out: Path) -> tuple[subprocess.Popen[str], int]:
    """A 400-iteration run in two processes, once it trains: rank 0 and the worker's pid."""
    args = _run_args(base, data, out, _settings(iters=400))
    rank0 = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, json.dumps(args)], env=_python_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert rank0.stderr is not None
    worker: int | None = None
    for line in rank0.stderr:
        if "workers: pids" in line:
            worker = int(line.rsplit("pids", 1)[1].strip())
        if "iter 0 (epoch 0.00): val loss" in line:  # the group formed and validated once
            break
    if worker is None or rank0.poll() is not None:
        rank0.kill()
        raise AssertionError("the run did not start training in two processes")
    return rank0, worker


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_killed_run_takes_its_workers_with_it(
    base_model_dir: Path, chat_dataset_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL of the rule's process (no cleanup code runs) ends its worker process too."""
    rank0, worker = _start_long_run(base_model_dir, chat_dataset_dir, tmp_path / "run")
    try:
        assert _alive(worker)
        rank0.send_signal(signal.SIGKILL)
        rank0.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(worker)
    finally:
        rank0.kill()
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.slow
def test_a_worker_killed_while_training_stops_the_run(
    base_model_dir: Path, chat_dataset_dir: Path, tmp_path: Path
) -> None:
    """A worker killed mid-run (as by the kernel's out-of-memory killer): rank 0, waiting for it inside a
    collective operation, exits with the worker's exit code in its log instead of hanging."""
    rank0, worker = _start_long_run(base_model_dir, chat_dataset_dir, tmp_path / "run")
    try:
        os.kill(worker, signal.SIGKILL)
        _, stderr = rank0.communicate(timeout=120)
    finally:
        rank0.kill()
    assert rank0.returncode == 1
    assert "training worker rank 1 exited with code -9" in stderr
    assert "training stopped: worker rank 1 failed" in stderr
    assert not (tmp_path / "run" / "adapters" / "last.safetensors").exists()
