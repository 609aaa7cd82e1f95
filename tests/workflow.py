"""Run the real Snakemake workflow on a copy of the repository in a temp dir."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
COPIED = (
    "Snakefile",
    "rules",
    "scripts",
    "config.yaml",
    "config.schema.yaml",
    "data",
    "profiles",
    "report",
    "envs",
)
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".mypy_cache")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, dest / name)
    return dest


# Result files at least this large (models, adapters, GGUFs) are hard-linked by copy_run, not copied.
LINK_MIN_BYTES = 1 << 20


def copy_run(source: Path, dest: Path) -> Path:
    """A copy of a workdir after a run: config, code, logs, results and Snakemake's .snakemake metadata
    (modification times kept), so that a test can change it and rerun without touching ``source``.

    Result files of LINK_MIN_BYTES or more (models, adapters, GGUFs) are hard links, which makes the copy
    fast and small: Snakemake deletes a job's outputs before it runs the job, so a rerun in the copy
    writes new files and leaves those of ``source`` alone. Do not edit such a file in place.
    """

    def copy(src: str, dst: str) -> object:
        if os.path.getsize(src) >= LINK_MIN_BYTES and Path(src).is_relative_to(source / "results"):
            os.link(src, dst)
            return dst
        return shutil.copy2(src, dst)

    shutil.copytree(source, dest, symlinks=True, copy_function=copy)
    return dest


def edit_config(workdir: Path, **sections: Any) -> None:
    """Merge ``sections`` into the copy's config.yaml (one level deep per section; a top-level key that
    is not a section, such as ``shards``, is set)."""
    path = workdir / "config.yaml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    for name, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(name, {}).update(values)
        else:
            config[name] = values
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def snakemake(
    workdir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
    cores: int | None = 2,
) -> Run:
    """Run Snakemake in ``workdir`` (``--cores 2``; ``cores=None``: no --cores), without ANTHROPIC_* vars."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    environment.update(env or {})
    proc = subprocess.run(
        [SNAKEMAKE, *(["--cores", str(cores)] if cores is not None else []), *args],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def dry_run_jobs(run: Run) -> dict[str, int]:
    """Rule name -> job count from the job stats table of a dry-run."""
    jobs: dict[str, int] = {}
    in_table = False
    for line in run.output.splitlines():
        if line.startswith("job") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
            if match and match.group(1) != "total":
                jobs[match.group(1)] = int(match.group(2))
            elif line.strip().startswith("total"):
                break
    return jobs


def dry_run_reasons(run: Run) -> dict[str, set[str]]:
    """Rule name -> the set of 'reason' lines of its jobs in a dry-run."""
    reasons: dict[str, set[str]] = {}
    rule = None
    for line in run.output.splitlines():
        match = re.match(r"^(?:localrule|rule|checkpoint|localcheckpoint) (\w+):", line)
        if match:
            rule = match.group(1)
        elif rule and line.strip().startswith("reason:"):
            reasons.setdefault(rule, set()).add(line.strip()[len("reason:") :].strip())
    return reasons


@dataclass(frozen=True)
class Job:
    """One job of a Snakemake run or dry-run: its rule, wildcards and reason."""

    rule: str
    wildcards: dict[str, str]
    reason: str


def run_jobs(run: Run) -> list[Job]:
    """Every job block of a run's or dry-run's output (``rule X:`` ... ``wildcards:`` ... ``reason:``)."""
    jobs: list[Job] = []
    rule: str | None = None
    fields: dict[str, str] = {}

    def close() -> None:
        if rule is not None:
            wildcards = dict(
                part.split("=", 1) for part in fields.get("wildcards", "").split(", ") if "=" in part
            )
            jobs.append(Job(rule, wildcards, fields.get("reason", "")))

    for line in run.output.splitlines():
        match = re.match(r"^(?:localrule|rule|checkpoint|localcheckpoint) (\w+):\s*$", line)
        if match:
            close()
            rule, fields = match.group(1), {}
            continue
        field_match = re.match(r"^\s+(\w+): (.*)$", line)
        if rule is not None and field_match:
            fields[field_match.group(1)] = field_match.group(2).strip()
        elif rule is not None and not line.startswith((" ", "\t")):
            close()
            rule = None
    close()
    return jobs
