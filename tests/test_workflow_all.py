"""`all` end to end through real Snakemake on a tiny config: dataset → train → fuse → exports → evaluate.

The run itself is the test-session fixture ``tiny_all_run`` (tests/conftest.py), shared with the sweep and
rerun tests; the test that changes the config works on a copy of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llama_cpp import Llama

from workflow import dry_run_jobs, edit_config, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture
def all_run(tiny_all_run: Path) -> Path:
    """The finished tiny ``all`` run (read-only, dry-runs only)."""
    return tiny_all_run


def test_all_writes_every_artefact(all_run: Path) -> None:
    results = all_run / "results"
    for path in (
        "train/default/adapters/adapters.safetensors",
        "train/default/metrics.jsonl",
        "train/default/loss.png",
        "train/default/summary.json",
        "train/default/test_loss.json",
        "sweep/ranking.md",
        "sweep/loss_curves.png",
        "sweep/winner.json",
        "fused/config.json",
        "export/hf/config.json",
        "export/hf/README.md",
        "export/gguf/tuned-q8_0.gguf",
        "export/gguf/base-q8_0.gguf",
        "export/gguf/Modelfile",
        "eval/metrics.json",
        "eval/report.html",
        "eval/answers.jsonl",
        "eval/scores.json",
        "benchmarks/train/default.tsv",
        "benchmarks/answer_test.tsv",
        "benchmarks/evaluate.tsv",
    ):
        assert (results / path).is_file(), path
    metrics = json.loads((results / "eval" / "metrics.json").read_text())
    assert metrics["n_examples"] == 4
    for key in ("delta_ci95", "significant", "better", "judge", "parity", "n_test_videos"):
        assert key in metrics, key
    report = (results / "eval" / "report.html").read_text()
    assert "data:image/png;base64," in report
    # --cores 2, batch 2: the train rule trained in two processes and removed their scratch directory
    train = json.loads((results / "train" / "default" / "summary.json").read_text())
    assert train["processes"]["count"] == 2
    assert not (results / "train" / "default" / ".workers").exists()


def test_judge_not_run_without_cached_replies_or_key(all_run: Path) -> None:
    """The seed cache has no judge replies for the tiny model's answers and no API key is set: the judge
    ends not_run with its reason, no verdict rows, and `all` still succeeds."""
    judge = json.loads((all_run / "results" / "eval" / "judge.json").read_text())
    assert judge["status"] == "not_run"
    assert "judge requests have no cached reply" in judge["reason"]
    assert "ANTHROPIC_API_KEY is not set" in judge["reason"]
    assert (all_run / "results" / "eval" / "judge.jsonl").read_text() == ""
    assert json.loads((all_run / "results" / "llm" / "usage" / "judge.json").read_text())["calls"] == 0
    report = (all_run / "results" / "eval" / "report.html").read_text()
    assert "The judge was not run:" in report and "ANTHROPIC_API_KEY is not set" in report
    metrics = json.loads((all_run / "results" / "eval" / "metrics.json").read_text())
    assert metrics["judge"]["status"] == "not_run"


def test_judge_reruns_once_a_key_is_set(all_run: Path) -> None:
    """A judge that ended not_run for want of a key is planned again (and the report after it) once
    ANTHROPIC_API_KEY is set; nothing upstream of it."""
    run = snakemake(all_run, "-n", "all", env={"ANTHROPIC_API_KEY": "sk-test"})
    assert run.returncode == 0, run.output
    jobs = dry_run_jobs(run)
    assert set(jobs) == {"judge", "evaluate", "all"}, jobs


def test_exported_gguf_answers_in_llama_cpp(all_run: Path) -> None:
    llm = Llama(str(all_run / "results/export/gguf/tuned-q8_0.gguf"), n_ctx=512, n_threads=1, verbose=False)
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": "How long do I preheat the dutch oven?"}],
        max_tokens=16,
        temperature=0,
    )
    assert isinstance(out, dict)
    assert str(out["choices"][0]["message"]["content"] or "").strip()


def test_all_rerun_is_a_no_op(all_run: Path) -> None:
    run = snakemake(all_run, "-n", "all")
    assert run.returncode == 0, run.output
    assert "Nothing to be done" in run.output


def test_train_writes_the_run_manifest(all_run: Path) -> None:
    """rules/manifest.smk: the run's manifest.json, and a config.yaml that reruns nothing (same run)."""
    run_dir = all_run / "results" / "train" / "default"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key in ("schema_version", "run", "created_at", "train", "config", "config_sha256", "train_settings",
                "train_settings_sha256", "seeds", "git", "versions", "platform", "blas", "files", "results"):
        assert key in manifest, key
    assert manifest["run"] == "default" and manifest["train_settings"]["profile"] == "tiny-test"
    assert manifest["train"]["started_at"] and manifest["train"]["ended_at"]
    assert manifest["git"]["commit"] is None and manifest["git"]["reason"]  # the temp copy is no checkout
    assert set(manifest["files"]["dataset"]) == {"train", "valid", "test", "stats"}
    assert "model.safetensors" in manifest["files"]["base_model"]["files"]
    assert [row["iteration"] for row in manifest["results"]["val_losses"]][:2] == [0, 2]
    run = snakemake(all_run, "-n", "train", "--configfile", "results/train/default/config.yaml")
    assert run.returncode == 0, run.output
    assert "Nothing to be done" in run.output


def test_train_change_reruns_training_and_after_with_zero_llm_steps(tiny_all_copy: Path) -> None:
    edit_config(tiny_all_copy, train={"learning_rate": 5.0e-4})
    run = snakemake(tiny_all_copy, "-n", "all")
    assert run.returncode == 0, run.output
    assert "rule questions:" not in run.output and "rule answers:" not in run.output
    for rule in ("train_run", "fuse", "export_gguf", "answer_test", "evaluate"):
        assert f"rule {rule}:" in run.output, rule
