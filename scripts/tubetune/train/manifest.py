"""Run manifest: what one training run was made of, enough to rerun it and check the result.

``results/train/<run>/manifest.json`` records the fully resolved config and its SHA-256 (canonical
JSON, sorted keys), that run's train settings and their hash, the seeds, the git commit and dirty
flag of the workflow, the versions of the packages that matter, the platform and the BLAS the run
trained with, SHA-256 and size of every dataset file, of every file of the base model dir and of the
adapter files, the start and end time, and the validation losses by iteration. Next to it
``config.yaml`` is the resolved config with that run's train settings and no sweep, so
``snakemake train --configfile results/train/<run>/config.yaml`` runs the same training again;
``python -m tubetune.train.reproduce results/train/<run>/manifest.json`` retrains from the manifest and
compares the validation losses (see :mod:`tubetune.train.reproduce`).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import logging
import os
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from tubetune.config import validate_config
from tubetune.errors import ConfigError, InputFileError
from tubetune.jsonio import atomic_write_text, canonical_json, read_json, read_jsonl, write_json

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Distribution names whose versions are recorded (None when not installed).
PACKAGES = (
    "mlx", "mlx-lm", "mlx-metal", "llama-cpp-python", "snakemake", "anthropic", "transformers", "gguf",
    "numpy", "torch",
)
# The config section that describes a sweep of several runs: the per-run config.yaml empties its lists.
SWEEP_KEY = "sweep"
MAX_DIRTY_PATHS = 20
# Snakemake's empty marker in directory() outputs: not part of the model.
IGNORED_FILES = frozenset({".snakemake_timestamp"})
CHUNK = 1 << 20
# The keys of summary.json copied into the manifest.
TIMES = ("started_at", "ended_at", "train_seconds", "total_seconds")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ hashes


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read to hash it ({exc.strerror or exc})") from exc
    return digest.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """``{"path", "sha256", "bytes"}`` of one file (``path`` as given)."""
    return {"path": str(path), "sha256": sha256_file(path), "bytes": Path(path).stat().st_size}


def files_in(folder: str | Path) -> list[Path]:
    """Every file under ``folder`` (recursively) but Snakemake's marker, sorted by relative path."""
    root = Path(folder)
    if not root.is_dir():
        raise InputFileError(f"{folder}: expected a directory")
    files = (p for p in root.rglob("*") if p.is_file() and p.name not in IGNORED_FILES)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def dir_record(folder: str | Path) -> dict[str, Any]:
    """``{"path", "files": {relative path: {"sha256", "bytes"}}}`` of every file under ``folder``."""
    root = Path(folder)
    files: dict[str, dict[str, Any]] = {}
    for path in tqdm(files_in(root), desc=f"sha256 {root.name}", unit="file", leave=False, disable=None):
        files[path.relative_to(root).as_posix()] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return {"path": str(folder), "files": files}


def data_sha256(data: Any) -> str:
    """SHA-256 of the canonical JSON of ``data``: independent of key order."""
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------- environment


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "--no-optional-locks", "-C", str(folder), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


def git_info(folder: str | Path) -> dict[str, Any]:
    """Commit, dirty flag and (up to 20) dirty paths of the git checkout holding ``folder``.

    Not a checkout, or no git: commit and dirty are None and ``reason`` says why. Untracked files
    that are not ignored count as dirty (a new rule file changes the workflow).
    """
    root = Path(folder)
    try:
        head = _git(root, "rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "dirty": None, "dirty_paths": [], "reason": f"git not available ({exc})"}
    if head.returncode != 0:
        reason = (head.stderr.strip().splitlines() or ["git rev-parse failed"])[-1]
        return {"commit": None, "dirty": None, "dirty_paths": [], "reason": f"not a git checkout: {reason}"}
    status = _git(root, "status", "--porcelain")
    if status.returncode != 0:
        reason = (status.stderr.strip().splitlines() or ["git status failed"])[-1]
        return {"commit": head.stdout.strip(), "dirty": None, "dirty_paths": [], "reason": reason}
    paths = [line[3:] for line in status.stdout.splitlines() if line.strip()]
    return {
        "commit": head.stdout.strip(),
        "dirty": bool(paths),
        "dirty_paths": paths[:MAX_DIRTY_PATHS],
        "dirty_count": len(paths),
        "reason": None,
    }


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def platform_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


# ----------------------------------------------------------------------------------------- manifest


def val_losses(metrics_path: str | Path) -> list[dict[str, Any]]:
    """``[{"iteration", "val_loss"}]`` of the validation rows of a run's metrics.jsonl."""
    return [
        {"iteration": row["iteration"], "val_loss": row["val_loss"]}
        for row in read_jsonl(metrics_path)
        if row.get("kind") == "val"
    ]


def seeds_of(config: Mapping[str, Any], train_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The seeds of a run and the LLM settings that decided the dataset's text."""
    llm = config.get("llm") or {}
    return {
        "train": train_settings.get("seed"),
        "dataset_split": (config.get("dataset") or {}).get("seed"),
        "evaluate": (config.get("evaluate") or {}).get("seed"),
        "llm": {key: llm.get(key) for key in ("backend", "model", "gguf", "max_tokens")}
        | {"decoding": "llama_cpp: greedy, temperature 0, seed 0; anthropic: the response cache"},
    }


def reproduce_config(config: Mapping[str, Any], train_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config with ``train`` = one run's settings and no sweep.

    The sweep's lists are emptied rather than the section dropped: ``--configfile`` merges into the
    workflow's config.yaml, so a missing section would leave that file's sweep in place.
    """
    single = copy.deepcopy(dict(config))
    single["train"] = copy.deepcopy(dict(train_settings))
    if isinstance(single.get(SWEEP_KEY), dict):
        single[SWEEP_KEY] = {
            key: [] if isinstance(value, list) else value for key, value in single[SWEEP_KEY].items()
        }
    return single


def check_reproduce_config(single: Mapping[str, Any], schema_path: str | Path) -> None:
    """``single`` must validate against the schema and resolve to the same train settings."""
    checked = copy.deepcopy(dict(single))
    try:
        validate_config(checked, schema_path)
    except ConfigError as exc:
        raise ConfigError(f"the run's config.yaml would not validate: {exc}") from exc
    if checked["train"] != single["train"]:
        changed = sorted(k for k in checked["train"] if checked["train"].get(k) != single["train"].get(k))
        raise ConfigError(f"the run's config.yaml resolves to other train settings ({', '.join(changed)})")


@dataclass(frozen=True)
class RunFiles:
    """The files of one run that the manifest hashes, with their paths as the rules name them.

    ``adapters``: ``adapters``, ``adapter_config``, ``last``; ``dataset``: ``train``, ``valid``, ``test``,
    ``stats``; ``base_model``: the base model dir (every file in it).
    """

    summary: Path
    metrics: Path
    adapters: Mapping[str, Path]
    dataset: Mapping[str, Path]
    base_model: Path


def build_manifest(
    *,
    run: str,
    files: RunFiles,
    config: Mapping[str, Any],
    train_settings: Mapping[str, Any],
    workflow_dir: str | Path,
) -> dict[str, Any]:
    """The manifest of one run (see the module docstring); file paths are recorded as given."""
    summary_data: dict[str, Any] = read_json(files.summary)
    resolved_config = copy.deepcopy(dict(config))
    settings = copy.deepcopy(dict(train_settings))
    logger.info("hashing the dataset, base model and adapter files of run %s", run)
    return {
        "schema_version": SCHEMA_VERSION,
        "run": run,
        "created_at": utc_now(),
        "workdir": os.getcwd(),
        "train": {key: summary_data.get(key) for key in TIMES},
        "config": resolved_config,
        "config_sha256": data_sha256(resolved_config),
        "train_settings": settings,
        "train_settings_sha256": data_sha256(settings),
        "seeds": seeds_of(resolved_config, settings),
        "git": git_info(workflow_dir),
        "versions": package_versions(),
        "platform": platform_info(),
        "blas": {key: summary_data.get(key) for key in ("blas", "blas_threads", "device", "processes")},
        "files": {
            "dataset": {name: file_record(path) for name, path in files.dataset.items()},
            "base_model": dir_record(files.base_model),
            "adapters": {name: file_record(path) for name, path in files.adapters.items()},
        },
        "results": {
            **{key: summary_data.get(key)
               for key in ("best_val_loss", "best_iteration", "iterations_run", "early_stopped")},
            "val_losses": val_losses(files.metrics),
        },
    }


def write_manifest(manifest_path: str | Path, config_path: str | Path, record: Mapping[str, Any]) -> None:
    """Write ``record`` to ``manifest.json`` and the run's ``config.yaml`` (:func:`reproduce_config`)."""
    single = reproduce_config(record["config"], record["train_settings"])
    run = record["run"]
    header = (
        f"# Resolved config of training run '{run}' (config sha256 {record['config_sha256'][:12]}...,\n"
        f"# train settings sha256 {record['train_settings_sha256'][:12]}...), written with its manifest.\n"
        f"# Rerun it with:  snakemake --cores 2 train --configfile {config_path}\n"
    )
    atomic_write_text(config_path, header + yaml.safe_dump(single, sort_keys=False, allow_unicode=True))
    write_json(manifest_path, record)
    git = record["git"]
    logger.info(
        "manifest of run %s: config %s, git %s%s, %d base model files, best val loss %s",
        run, record["config_sha256"][:12], git["commit"] or f"none ({git['reason']})",
        " (dirty)" if git["dirty"] else "", len(record["files"]["base_model"]["files"]),
        record["results"]["best_val_loss"],
    )


def manifest(
    *,
    summary: str | Path,
    metrics: str | Path,
    adapters: str | Path,
    adapter_config: str | Path,
    last: str | Path,
    train: str | Path,
    valid: str | Path,
    test: str | Path,
    stats: str | Path,
    base: str | Path,
    manifest_json: str | Path,
    config_yaml: str | Path,
    run: str,
    train_settings: Mapping[str, Any],
    config: Mapping[str, Any],
    workflow_dir: str | Path,
) -> dict[str, Any]:
    """The rule ``manifest``: its inputs, its two outputs and its params; returns the manifest.

    The run's config.yaml is checked against the schema first, before the files are hashed.
    """
    schema = Path(workflow_dir) / "config.schema.yaml"
    check_reproduce_config(reproduce_config(config, train_settings), schema)
    files = RunFiles(
        summary=Path(summary),
        metrics=Path(metrics),
        adapters={"adapters": Path(adapters), "adapter_config": Path(adapter_config), "last": Path(last)},
        dataset={"train": Path(train), "valid": Path(valid), "test": Path(test), "stats": Path(stats)},
        base_model=Path(base),
    )
    record = build_manifest(
        run=run, files=files, config=config, train_settings=train_settings, workflow_dir=workflow_dir
    )
    write_manifest(manifest_json, config_yaml, record)
    return record
