"""Run manifest (tubetune.train.manifest) and reproduction from it (tubetune.train.reproduce): hashes,
config hash, git state, the per-run config.yaml, input checks, and a real tiny run rerun from its manifest."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tubetune.config import validate_config
from tubetune.errors import InputFileError
from tubetune.train.manifest import (
    PACKAGES,
    RunFiles,
    build_manifest,
    check_reproduce_config,
    data_sha256,
    dir_record,
    file_record,
    git_info,
    reproduce_config,
    write_manifest,
)
from tubetune.train.reproduce import DEFAULT_TOLERANCE, compare_losses, input_problems

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "config.schema.yaml"


def resolved_config(**train: Any) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["train"].update(train)
    validate_config(config, SCHEMA)
    return config


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ hashes


def test_file_and_dir_records_hash_every_file(tmp_path: Path) -> None:
    model = tmp_path / "base"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 5000)
    (model / ".snakemake_timestamp").write_text("")  # Snakemake's directory() marker: not hashed
    record = file_record(model / "config.json")
    assert record == {"path": str(model / "config.json"), "sha256": sha256(model / "config.json"), "bytes": 8}
    folder = dir_record(model)
    assert folder["path"] == str(model)
    assert list(folder["files"]) == ["config.json", "sub/weights.bin"]
    assert folder["files"]["sub/weights.bin"] == {
        "sha256": sha256(model / "sub" / "weights.bin"), "bytes": 256 * 5000,
    }


def test_config_hash_ignores_key_order_but_not_values() -> None:
    config = resolved_config()
    reordered = json.loads(json.dumps(dict(reversed(list(config.items())))))
    reordered["train"] = dict(reversed(list(reordered["train"].items())))
    assert list(reordered) != list(config)
    assert data_sha256(reordered) == data_sha256(config)
    changed = copy.deepcopy(config)
    changed["train"]["learning_rate"] = 3e-4
    assert data_sha256(changed) != data_sha256(config)


# --------------------------------------------------------------------------------------------- git


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-C", str(folder), *args],
        capture_output=True, text=True, check=True,
    )
    return done.stdout.strip()


def test_git_info_commit_and_dirty_flag(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "Snakefile").write_text("rule all:\n")
    (repo / ".gitignore").write_text("results/\n")
    _git(repo, "add", "Snakefile", ".gitignore")
    _git(repo, "commit", "-q", "-m", "first")
    commit = _git(repo, "rev-parse", "HEAD")

    clean = git_info(repo)
    assert clean == {"commit": commit, "dirty": False, "dirty_paths": [], "dirty_count": 0, "reason": None}
    (repo / "results").mkdir()
    (repo / "results" / "out.txt").write_text("ignored output")
    assert git_info(repo)["dirty"] is False
    (repo / "Snakefile").write_text("rule all:\n    input: []\n")
    (repo / "new.smk").write_text("# untracked\n")
    dirty = git_info(repo)
    assert dirty["commit"] == commit and dirty["dirty"] is True
    assert sorted(dirty["dirty_paths"]) == ["Snakefile", "new.smk"] and dirty["dirty_count"] == 2

    outside = tmp_path / "plain"
    outside.mkdir()
    info = git_info(outside)
    assert info["commit"] is None and info["dirty"] is None
    assert info["reason"].startswith("not a git checkout")


# ------------------------------------------------------------------------------- per-run config.yaml


def test_run_config_has_the_run_settings_no_sweep_and_validates(tmp_path: Path) -> None:
    config = resolved_config()
    config["sweep"] = {"learning_rate": [1e-4, 5e-4], "rank": [], "num_layers": [], "select_by": "val_loss"}
    validate_config(config, SCHEMA)
    settings = dict(config["train"], learning_rate=5e-4)
    single = reproduce_config(config, settings)
    assert single["train"] == settings
    assert single["sweep"]["learning_rate"] == [] and single["sweep"]["select_by"] == "val_loss"
    assert config["sweep"]["learning_rate"] == [1e-4, 5e-4]  # the input is not changed
    check_reproduce_config(single, SCHEMA)
    # what snakemake --configfile reads: YAML, validated again, gives back the same train settings
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(single, sort_keys=False))
    again = yaml.safe_load(path.read_text())
    validate_config(again, SCHEMA)
    assert again["train"] == settings and again == single


# ---------------------------------------------------------------------------- manifest of run files


def fake_run_files(tmp_path: Path) -> dict[str, Any]:
    """A run's files on disk (small stand-ins for the adapter bytes, real JSON structure)."""
    run = tmp_path / "results" / "train" / "default"
    (run / "adapters").mkdir(parents=True)
    threads = {"requested": 2, "start": 2, "end": 2, "changes": 0}
    summary = {"best_val_loss": 2.5, "best_iteration": 4, "iterations_run": 6, "early_stopped": False,
               "blas": "OpenBLAS 0.3 (lib)", "blas_threads": threads,
               "device": "Device(cpu, 0)", "started_at": "2026-01-01T00:00:00+00:00",
               "ended_at": "2026-01-01T00:01:00+00:00", "train_seconds": 55.0, "total_seconds": 60.0}
    (run / "summary.json").write_text(json.dumps(summary))
    rows = [{"kind": "val", "iteration": 0, "val_loss": 3.0},
            {"kind": "train", "iteration": 2, "val_loss": None},
            {"kind": "val", "iteration": 2, "val_loss": 2.7},
            {"kind": "val", "iteration": 4, "val_loss": 2.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    adapters = {name: run / "adapters" / name for name in
                ("adapters.safetensors", "adapter_config.json", "last.safetensors")}
    for path in adapters.values():
        path.write_bytes(path.name.encode() * 10)
    data = tmp_path / "results" / "dataset"
    data.mkdir(parents=True)
    dataset = {name: data / f"{name}.jsonl" for name in ("train", "valid", "test")}
    for name, path in dataset.items():
        path.write_text(json.dumps({"messages": [{"role": "user", "content": name}]}) + "\n")
    dataset["stats"] = data / "stats.json"
    dataset["stats"].write_text("{}")
    base = tmp_path / "results" / "model" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"\0" * 1000)
    return {"run_dir": run, "files": RunFiles(
        summary=run / "summary.json", metrics=run / "metrics.jsonl",
        adapters={"adapters": adapters["adapters.safetensors"],
                  "adapter_config": adapters["adapter_config.json"], "last": adapters["last.safetensors"]},
        dataset=dataset, base_model=base,
    )}


def test_write_manifest_records_everything(tmp_path: Path) -> None:
    run = fake_run_files(tmp_path)
    files: RunFiles = run["files"]
    config = resolved_config(profile="tiny-test")
    settings = dict(config["train"])
    manifest_path, config_path = run["run_dir"] / "manifest.json", run["run_dir"] / "config.yaml"
    manifest = build_manifest(run="default", files=files, config=config, train_settings=settings,
                              workflow_dir=ROOT)
    write_manifest(manifest_path, config_path, manifest)
    assert json.loads(manifest_path.read_text()) == manifest
    assert manifest["schema_version"] == 1 and manifest["run"] == "default"
    assert manifest["config"] == config and manifest["config_sha256"] == data_sha256(config)
    assert manifest["train_settings"] == settings
    assert manifest["train_settings_sha256"] == data_sha256(settings)
    assert manifest["train"]["started_at"] == "2026-01-01T00:00:00+00:00"
    assert manifest["train"]["ended_at"] == "2026-01-01T00:01:00+00:00"
    assert manifest["seeds"]["train"] == settings["seed"]
    assert manifest["seeds"]["dataset_split"] == config["dataset"]["seed"]
    assert manifest["seeds"]["llm"]["backend"] == config["llm"]["backend"]
    assert set(manifest["versions"]) == set(PACKAGES)
    assert manifest["versions"]["mlx"] and manifest["versions"]["snakemake"]
    assert {"python", "platform", "machine", "cpu_count"} <= set(manifest["platform"])
    assert manifest["blas"]["blas"] == "OpenBLAS 0.3 (lib)" and manifest["blas"]["blas_threads"]["start"] == 2
    assert set(manifest["git"]) >= {"commit", "dirty", "reason"}
    dataset = manifest["files"]["dataset"]
    assert set(dataset) == {"train", "valid", "test", "stats"}
    assert dataset["valid"]["sha256"] == sha256(files.dataset["valid"])
    assert set(manifest["files"]["base_model"]["files"]) == {"config.json", "model.safetensors"}
    assert manifest["files"]["adapters"]["adapters"]["sha256"] == sha256(files.adapters["adapters"])
    assert manifest["results"]["best_val_loss"] == 2.5 and manifest["results"]["best_iteration"] == 4
    assert manifest["results"]["val_losses"] == [
        {"iteration": 0, "val_loss": 3.0},
        {"iteration": 2, "val_loss": 2.7},
        {"iteration": 4, "val_loss": 2.5},
    ]
    written = yaml.safe_load(config_path.read_text())
    assert written["train"] == settings
    validate_config(written, SCHEMA)
    assert "--configfile" in config_path.read_text().splitlines()[2]


def test_input_problems_name_each_changed_missing_or_new_file(tmp_path: Path) -> None:
    files: RunFiles = fake_run_files(tmp_path)["files"]
    config = resolved_config(profile="tiny-test")
    manifest = build_manifest(run="default", files=files, config=config, train_settings=config["train"],
                              workflow_dir=ROOT)
    assert input_problems(manifest) == []
    files.dataset["valid"].write_text(files.dataset["valid"].read_text().replace("valid", "VALID"))
    (files.base_model / "config.json").unlink()
    (files.base_model / "extra.txt").write_text("x")
    problems = input_problems(manifest)
    assert problems == [
        f"{files.dataset['valid']}: dataset file (valid) changed since the run (SHA-256 differs)",
        f"{files.base_model / 'config.json'}: base model file is missing",
        f"{files.base_model / 'extra.txt'}: base model file is new since the run",
    ]
    # relative paths are taken from the root directory given
    relative = copy.deepcopy(manifest)
    relative["files"]["dataset"] = {"train": dict(manifest["files"]["dataset"]["train"], path="train.jsonl")}
    relative["files"]["base_model"]["path"] = "nowhere"
    problems = input_problems(relative, root=files.dataset["train"].parent)
    assert problems == [f"{files.dataset['train'].parent / 'nowhere'}: base model directory is missing"]


def test_compare_losses_by_iteration() -> None:
    expected = [{"iteration": 0, "val_loss": 3.0}, {"iteration": 2, "val_loss": 2.5},
                {"iteration": 4, "val_loss": 2.2}]
    close = [{"iteration": 0, "val_loss": 3.0}, {"iteration": 2, "val_loss": 2.5 + DEFAULT_TOLERANCE / 2},
             {"iteration": 4, "val_loss": 2.2}]
    assert all(row.within(DEFAULT_TOLERANCE) for row in compare_losses(expected, close))
    far = [{"iteration": 0, "val_loss": 3.0}, {"iteration": 2, "val_loss": 2.5 + 2 * DEFAULT_TOLERANCE}]
    rows = compare_losses(expected, far)
    assert [row.within(DEFAULT_TOLERANCE) for row in rows] == [True, False, False]
    assert rows[2].reproduced is None and rows[2].difference is None
    both_nan = [{"iteration": 0, "val_loss": None}]
    assert compare_losses(both_nan, both_nan)[0].within(0.0)


# ------------------------------------------------------------------------- real run, then rerun it


@pytest.fixture(scope="module")
def tiny_run(base_model_dir: Path, chat_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Any]:
    """A real tiny-test LoRA run (6 iterations, val every 2) and its manifest."""
    from tubetune.settings import settings_from
    from tubetune.train.manifest import manifest
    from tubetune.train.reproduce import run_layout
    from tubetune.train.runner import run_training
    from tubetune.train.settings import TrainSettings

    root = tmp_path_factory.mktemp("manifest_run")
    data = root / "dataset"
    shutil.copytree(chat_dataset_dir, data)  # the fixture is shared: tamper with a copy only
    (data / "stats.json").write_text("{}")
    # one process: this test process trains again (the rerun), and MLX keeps a process's first group
    config = resolved_config(profile="tiny-test", seed=5, cpu_processes=1)
    run_dir = root / "train" / "default"
    settings = settings_from(TrainSettings, config["train"], "train")
    outputs = run_layout(run_dir)
    run_training(data / "train.jsonl", data / "valid.jsonl", base_model_dir, outputs, settings,
                 blas_threads=2)
    written = manifest(  # the rule's entry, with its inputs, outputs and params
        summary=outputs.summary, metrics=outputs.metrics, adapters=outputs.adapters,
        adapter_config=outputs.adapter_config, last=outputs.last, train=data / "train.jsonl",
        valid=data / "valid.jsonl", test=data / "test.jsonl", stats=data / "stats.json", base=base_model_dir,
        manifest_json=run_dir / "manifest.json", config_yaml=run_dir / "config.yaml", run="default",
        train_settings=config["train"], config=config, workflow_dir=ROOT,
    )
    return {"root": root, "data": data, "run_dir": run_dir, "manifest": written}


@pytest.mark.slow
def test_real_run_manifest(tiny_run: dict[str, Any], base_model_dir: Path) -> None:
    manifest = tiny_run["manifest"]
    assert [row["iteration"] for row in manifest["results"]["val_losses"]] == [0, 2, 4, 6]
    assert manifest["train"]["started_at"] <= manifest["train"]["ended_at"]
    assert manifest["train"]["started_at"].endswith("+00:00")
    assert "model.safetensors" in manifest["files"]["base_model"]["files"]
    weights = manifest["files"]["base_model"]["files"]["model.safetensors"]
    assert weights["sha256"] == sha256(base_model_dir / "model.safetensors")
    assert manifest["blas"]["processes"] == {"count": 1, "threads": 2, "blas_threads_each": 2,
                                             "reason": "train.cpu_processes"}
    assert manifest["blas"]["blas_threads"]["requested"] == 2
    assert manifest["seeds"]["train"] == 5


@pytest.mark.slow
def test_rerun_from_manifest_matches_then_tampered_input_is_named(
    tiny_run: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tubetune.train.reproduce import main

    manifest_path = tiny_run["run_dir"] / "manifest.json"
    out = tmp_path / "rerun"
    assert main([str(manifest_path), "--out", str(out)]) == 0
    result = json.loads((out / "reproduce.json").read_text())
    assert result["passed"] is True and result["tolerance"] == DEFAULT_TOLERANCE
    assert [row["iteration"] for row in result["val_losses"]] == [0, 2, 4, 6]
    assert all(row["ok"] and row["abs_diff"] <= DEFAULT_TOLERANCE for row in result["val_losses"])
    assert result["max_abs_diff"] <= DEFAULT_TOLERANCE
    assert result["config_sha256"] == tiny_run["manifest"]["config_sha256"]
    assert (out / "train" / "metrics.jsonl").is_file() and (out / "reproduce.log").is_file()

    # another seed fails the comparison (val loss off by 0.01-0.03): the check has teeth
    other = json.loads(manifest_path.read_text())
    other["train_settings"]["seed"] = 6
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    assert main([str(other_path), "--out", str(tmp_path / "other")]) == 1
    assert json.loads((tmp_path / "other" / "reproduce.json").read_text())["passed"] is False

    valid = tiny_run["data"] / "valid.jsonl"
    valid.write_text(valid.read_text().replace("Crumb Lab", "Crumb Lab!", 1))
    capsys.readouterr()
    with pytest.raises(SystemExit) as failed:
        main([str(manifest_path), "--out", str(tmp_path / "tampered")])
    assert failed.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "ERROR" in line]
    assert len(errors) == 1
    assert f"{valid}: dataset file (valid) changed since the run (SHA-256 differs)" in errors[0]
    assert not (tmp_path / "tampered" / "train").exists()
    with pytest.raises(InputFileError, match=r"valid\.jsonl"):
        from tubetune.train.reproduce import reproduce

        reproduce(manifest_path, tmp_path / "tampered")
