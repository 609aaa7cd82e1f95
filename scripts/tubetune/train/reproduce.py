"""Rerun a training run from its manifest and check it gives the same validation losses.

    python -m tubetune.train.reproduce results/train/<run>/manifest.json [--out DIR] [--tolerance X]

Steps: check the SHA-256 of the dataset files and of every base model file against the manifest
(a changed, missing or extra file stops here with one line naming it, unless
``--allow-changed-inputs``); warn about package version, platform and BLAS differences; retrain
with the manifest's train settings on the same files into ``--out`` (default
``<manifest dir>/reproduce``); compare the val loss at every validated iteration with the
manifest's, log a table, write ``reproduce.json`` there, and exit 1 if any differs by more than
the tolerance.

Tolerance, measured on this project's 2-core AMD EPYC Linux machine (OpenBLAS 0.3.29, ZEN kernels):
three runs of the tiny-test profile (SmolLM2-135M float32, 6 iterations, val at 0/2/4/6) with
OPENBLAS_NUM_THREADS 1, 2 and 1: the 1-thread runs gave bit-identical val losses, the 2-thread run
differed by at most 4.8e-7 (with these kernels a float32 GEMM's last bits depend on the thread count;
with the SKYLAKEX kernels of OpenBLAS 0.3.31 they did not). The runner lowers the thread count while
other processes keep cores busy, so a rerun can differ at that level. What else can move the losses
is another CPU kernel (AVX2 vs AVX-512), another BLAS (Accelerate, the reference BLAS) or another mlx
version: the manifest records these and the rerun warns when they differ. DEFAULT_TOLERANCE (1e-3)
allows that floating-point noise and is still far below what a real change does (train.seed 6
instead of 5 moved the tiny run's val loss by 0.011 after 2 iterations and 0.028 after 4; see
tests/test_manifest.py).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tubetune.errors import InputFileError
from tubetune.jsonio import read_json, write_json
from tubetune.logs import FORMAT, setup_logging, user_errors
from tubetune.settings import settings_from
from tubetune.train.manifest import (
    SCHEMA_VERSION,
    files_in,
    package_versions,
    platform_info,
    sha256_file,
    utc_now,
    val_losses,
)
from tubetune.train.settings import TrainSettings

if TYPE_CHECKING:
    from tubetune.train.runner import TrainOutputs

logger = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-3


# ------------------------------------------------------------------------------------------ inputs


def _resolve(root: Path, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else root / candidate


def input_problems(manifest: Mapping[str, Any], root: str | Path = ".") -> list[str]:
    """One line per dataset or base model file that is missing, changed or new since the manifest."""
    base = Path(root)
    problems: list[str] = []
    files = manifest["files"]
    for name, record in files["dataset"].items():
        path = _resolve(base, record["path"])
        if not path.is_file():
            problems.append(f"{path}: dataset file ({name}) is missing")
        elif sha256_file(path) != record["sha256"]:
            problems.append(f"{path}: dataset file ({name}) changed since the run (SHA-256 differs)")
    model = files["base_model"]
    folder = _resolve(base, model["path"])
    if not folder.is_dir():
        return [*problems, f"{folder}: base model directory is missing"]
    recorded: Mapping[str, Any] = model["files"]
    present = {p.relative_to(folder).as_posix(): p for p in files_in(folder)}
    for relative, record in recorded.items():
        if relative not in present:
            problems.append(f"{folder / relative}: base model file is missing")
        elif sha256_file(present[relative]) != record["sha256"]:
            problems.append(f"{folder / relative}: base model file changed since the run (SHA-256 differs)")
    new = sorted(set(present) - set(recorded))
    problems.extend(f"{present[relative]}: base model file is new since the run" for relative in new)
    return problems


def environment_differences(manifest: Mapping[str, Any], blas: str | None) -> list[str]:
    """Package versions, platform and BLAS that differ from the manifest's (warnings, not errors)."""
    differences: list[str] = []
    for name, version in package_versions().items():
        recorded = manifest["versions"].get(name)
        if recorded != version:
            differences.append(
                f"{name} {version or 'not installed'} (manifest: {recorded or 'not installed'})"
            )
    current = platform_info()
    for key in ("python", "platform", "machine", "cpu_count"):
        if manifest["platform"].get(key) != current[key]:
            differences.append(f"{key} {current[key]} (manifest: {manifest['platform'].get(key)})")
    recorded_blas = manifest["blas"].get("blas")
    if blas is not None and recorded_blas != blas:
        differences.append(f"BLAS {blas} (manifest: {recorded_blas})")
    return differences


# ---------------------------------------------------------------------------------------- layout


def run_layout(folder: str | Path) -> TrainOutputs:
    """The files of a retrained run under ``folder``, laid out as rules/train.smk lays out a run."""
    from tubetune.train.runner import TrainOutputs  # imports mlx

    root = Path(folder)
    return TrainOutputs(
        adapters=root / "adapters" / "adapters.safetensors",
        adapter_config=root / "adapters" / "adapter_config.json",
        last=root / "adapters" / "last.safetensors",
        metrics=root / "metrics.jsonl",
        plot=root / "loss.png",
        summary=root / "summary.json",
    )


# ---------------------------------------------------------------------------------------- compare


@dataclass(frozen=True)
class LossRow:
    iteration: int
    expected: float | None
    reproduced: float | None

    @property
    def difference(self) -> float | None:
        if self.expected is None or self.reproduced is None:
            return None
        return abs(self.reproduced - self.expected)

    def within(self, tolerance: float) -> bool:
        if self.expected is None and self.reproduced is None:
            return True  # both NaN (written as null)
        difference = self.difference
        return difference is not None and math.isfinite(difference) and difference <= tolerance

    def report(self, tolerance: float) -> dict[str, Any]:
        """The row in reproduce.json."""
        return {"iteration": self.iteration, "expected": self.expected, "reproduced": self.reproduced,
                "abs_diff": self.difference, "ok": self.within(tolerance)}


def compare_losses(
    expected: Sequence[Mapping[str, Any]], reproduced: Sequence[Mapping[str, Any]]
) -> list[LossRow]:
    """Val loss rows matched by iteration; an iteration only one side has compares as missing."""
    want = {int(row["iteration"]): row["val_loss"] for row in expected}
    got = {int(row["iteration"]): row["val_loss"] for row in reproduced}
    return [
        LossRow(iteration, want.get(iteration), got.get(iteration))
        for iteration in sorted(set(want) | set(got))
    ]


def format_table(rows: Sequence[LossRow], tolerance: float) -> str:
    def number(value: float | None) -> str:
        return "missing" if value is None else f"{value:.6f}"

    lines = [f"{'iteration':>9}  {'manifest':>10}  {'rerun':>10}  {'abs diff':>9}  ok"]
    for row in rows:
        diff = "-" if row.difference is None else f"{row.difference:.2e}"
        lines.append(f"{row.iteration:>9}  {number(row.expected):>10}  {number(row.reproduced):>10}  "
                     f"{diff:>9}  {'yes' if row.within(tolerance) else 'NO'}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- run


def reproduce(
    manifest_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    root: str | Path = ".",
    allow_changed_inputs: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Retrain the run of ``manifest_path`` and compare; write and return ``reproduce.json``'s data.

    ``root``: the directory the manifest's relative paths are relative to (the workflow's working
    directory). ``threads``: the run's threads, shared by its training processes (default: as the run).
    Raises :class:`InputFileError` when an input changed (and ``allow_changed_inputs`` is false).
    """
    manifest: dict[str, Any] = read_json(manifest_path)
    if manifest.get("schema_version") != SCHEMA_VERSION or "train_settings" not in manifest:
        raise InputFileError(
            f"{manifest_path}: not a tubetune run manifest (schema_version {SCHEMA_VERSION})"
        )
    out = Path(out_dir) if out_dir is not None else Path(manifest_path).parent / "reproduce"
    problems = input_problems(manifest, root)
    if problems and not allow_changed_inputs:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputFileError(f"{problems[0]}{more}; pass --allow-changed-inputs to retrain anyway")
    for problem in problems:
        logger.warning("%s", problem)

    from tubetune.mlxrt import BLAS  # imports mlx: only now

    from tubetune.train.runner import run_training

    differences = environment_differences(manifest, BLAS)
    for difference in differences:
        logger.warning("environment differs: %s", difference)
    if threads is None:  # the run's threads (shared by its processes), else its OpenBLAS threads
        recorded = manifest["blas"].get("blas_threads") or {}
        processes = manifest["blas"].get("processes") or {}
        threads = processes.get("threads") or recorded.get("requested") or recorded.get("start")
    settings = settings_from(TrainSettings, manifest["train_settings"], "train")
    dataset = manifest["files"]["dataset"]
    base = Path(root)
    started_at = utc_now()
    outputs = run_layout(out / "train")
    summary = run_training(
        _resolve(base, dataset["train"]["path"]), _resolve(base, dataset["valid"]["path"]),
        _resolve(base, manifest["files"]["base_model"]["path"]), outputs, settings, blas_threads=threads,
    )
    rows = compare_losses(manifest["results"]["val_losses"], val_losses(outputs.metrics))
    differences_found = [row.difference for row in rows if row.difference is not None]
    passed = all(row.within(tolerance) for row in rows)
    logger.info("val loss, manifest vs rerun (tolerance %.1e):\n%s", tolerance, format_table(rows, tolerance))
    result: dict[str, Any] = {
        "manifest": str(manifest_path),
        "run": manifest.get("run"),
        "config_sha256": manifest.get("config_sha256"),
        "train_settings_sha256": manifest.get("train_settings_sha256"),
        "started_at": started_at,
        "ended_at": utc_now(),
        "tolerance": tolerance,
        "passed": passed,
        "max_abs_diff": max(differences_found, default=None),
        "val_losses": [row.report(tolerance) for row in rows],
        "changed_inputs": problems,
        "environment_differences": differences,
        "blas": summary.get("blas"),
        "blas_threads": summary.get("blas_threads"),
        "best_val_loss": {"manifest": manifest["results"].get("best_val_loss"),
                          "rerun": summary.get("best_val_loss")},
        "out_dir": str(out),
    }
    write_json(out / "reproduce.json", result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tubetune.train.reproduce",
        description="Retrain a run from its manifest.json and compare the validation losses.",
    )
    parser.add_argument("manifest", help="results/train/<run>/manifest.json")
    parser.add_argument("--out", help="where to retrain (default: <manifest dir>/reproduce)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest accepted |val loss difference| (default {DEFAULT_TOLERANCE:g})")
    parser.add_argument("--root", default=".",
                        help="directory the manifest's relative paths start from (default: .)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads, shared by the training processes (default: as the run)")
    parser.add_argument("--allow-changed-inputs", action="store_true",
                        help="retrain even when dataset or base model files differ from the manifest")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.manifest).parent / "reproduce"
    setup_logging(None)
    log_file = out / "reproduce.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    logging.getLogger().addHandler(handler)
    try:
        with user_errors():
            result = reproduce(args.manifest, out, tolerance=args.tolerance, root=args.root,
                               allow_changed_inputs=args.allow_changed_inputs, threads=args.threads)
        if not result["passed"]:
            failed = [row for row in result["val_losses"] if not row["ok"]]
            logger.error(
                "val loss differs from the manifest by more than %.1e at %d iteration(s) (first: %d, "
                "max abs diff %s): see %s", args.tolerance, len(failed), failed[0]["iteration"],
                result["max_abs_diff"], out / "reproduce.json",
            )
            return 1
        logger.info("reproduced: every val loss within %.1e of the manifest (max abs diff %s)",
                    args.tolerance, result["max_abs_diff"])
        return 0
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


if __name__ == "__main__":
    sys.exit(main())
