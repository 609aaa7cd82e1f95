"""The workflow on a real SLURM: a single-node cluster on 127.0.0.1 (.ci/slurm-up: Debian's slurmctld,
slurmd and munge, no accounting) runs `train` (and so `dataset`) through snakemake-executor-plugin-slurm
with profiles/slurm, and the results equal those of a local run (tiny_all_run).

Skipped only where the cluster cannot be set up (not root, or SLURM missing without apt-get); under CI
(CI=true) that is a failure instead.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import TINY_ALL_CONFIG
from workflow import REPO, copy_workflow, edit_config, snakemake

SLURM_UP = REPO / ".ci" / "slurm-up"
RESOURCE_CLASSES = ("light", "llm", "llm_batch", "model", "train", "evaluate")
# the rules of `train` that run as SLURM jobs; the others are local rules (the Snakefile's localrules)
SUBMITTED_RULES = {
    "list_videos", "transcripts", "questions", "answers", "build_dataset", "base_model", "train_run",
    "test_loss",
}
LOCAL_RULES = {"review_index", "llm_ledger", "compare", "manifest"}


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """A running single-node SLURM (installed and started by .ci/slurm-up when needed)."""
    reason = None
    if os.geteuid() != 0:
        reason = "installing and starting SLURM (.ci/slurm-up) needs root"
    elif shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        reason = "SLURM is not installed and apt-get is not available to install it"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI: {reason}")
        pytest.skip(reason)
    proc = subprocess.run([str(SLURM_UP)], capture_output=True, text=True, timeout=1200, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _losses(metrics: Path) -> list[tuple[str, int, float]]:
    rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [
        (row["kind"], row["iteration"], row["train_loss"] if row["kind"] == "train" else row["val_loss"])
        for row in rows
    ]


@pytest.mark.slow
def test_dataset_and_train_through_slurm_equal_a_local_run(
    slurm_cluster: None, tiny_all_run: Path, tmp_path: Path
) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    edit_config(workdir, **TINY_ALL_CONFIG)
    # each job asks for 1000 MB, so that the node of any CI machine can run them (no rerun: resources
    # are not params)
    edit_config(workdir, resources={name: {"mem_mb": 1000} for name in RESOURCE_CLASSES})
    start = time.monotonic()
    run = snakemake(
        workdir,
        "--workflow-profile", "profiles/slurm",
        "--jobs", "8",
        # no accounting (slurmdbd) on the test cluster: job states from squeue, not sacct
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
        "train",
        cores=2,  # the heavy jobs ask for 2 CPUs, as in the local run
        timeout=2400,
    )
    elapsed = time.monotonic() - start
    assert run.returncode == 0, run.output[-6000:]
    print(f"SLURM run of train: {elapsed:.0f} s")
    assert "Using workflow specific profile profiles/slurm" in run.output

    # every job except the local rules was an sbatch job
    submitted = set(re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/rule_(\w+)/", run.output))
    assert submitted == SUBMITTED_RULES, submitted
    local = set(re.findall(r"^local(?:rule|checkpoint) (\w+):", run.output, flags=re.M))
    assert local == LOCAL_RULES, local

    # the dataset is the local run's, byte for byte
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "stats.json"):
        cluster = (workdir / "results" / "dataset" / name).read_bytes()
        assert cluster == (tiny_all_run / "results" / "dataset" / name).read_bytes(), name

    # the same training: every logged train and validation loss, and the test loss
    run_dir = workdir / "results" / "train" / "default"
    local_dir = tiny_all_run / "results" / "train" / "default"
    assert (run_dir / "adapters" / "adapters.safetensors").stat().st_size > 0
    assert (run_dir / "manifest.json").is_file() and (workdir / "results" / "sweep" / "winner.json").is_file()
    cluster_losses, local_losses = _losses(run_dir / "metrics.jsonl"), _losses(local_dir / "metrics.jsonl")
    assert [row[:2] for row in cluster_losses] == [row[:2] for row in local_losses]
    assert len(cluster_losses) >= 4
    for (kind, iteration, loss), (_, _, expected) in zip(cluster_losses, local_losses, strict=True):
        assert math.isclose(loss, expected, rel_tol=1e-4), (kind, iteration, loss, expected)
    test_loss = json.loads((run_dir / "test_loss.json").read_text(encoding="utf-8"))["loss"]
    expected_test_loss = json.loads((local_dir / "test_loss.json").read_text(encoding="utf-8"))["loss"]
    assert math.isclose(test_loss, expected_test_loss, rel_tol=1e-4)
