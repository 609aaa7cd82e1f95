"""`all` end to end through real Snakemake on a tiny config: dataset → train → fuse → exports → evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llama_cpp import Llama

from workflow import copy_workflow, edit_config, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def all_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("all"))
    edit_config(
        workdir,
        train={"profile": "tiny-test"},
        export={"gguf_types": ["q8_0"]},
        evaluate={"max_examples": 4, "max_new_tokens": 24, "n_side_by_side": 2},
    )
    run = snakemake(workdir, "all")
    assert run.returncode == 0, run.output[-6000:]
    return workdir


def test_all_writes_every_artefact(all_run: Path) -> None:
    results = all_run / "results"
    for path in (
        "train/adapters/adapters.safetensors",
        "train/metrics.jsonl",
        "train/loss.png",
        "train/summary.json",
        "fused/config.json",
        "export/hf/config.json",
        "export/hf/README.md",
        "export/gguf/tuned-q8_0.gguf",
        "export/gguf/base-q8_0.gguf",
        "export/gguf/Modelfile",
        "eval/metrics.json",
        "eval/report.html",
        "eval/answers.jsonl",
        "benchmarks/train.tsv",
        "benchmarks/evaluate.tsv",
    ):
        assert (results / path).is_file(), path
    metrics = json.loads((results / "eval" / "metrics.json").read_text())
    assert metrics["n_examples"] == 4
    report = (results / "eval" / "report.html").read_text()
    assert "data:image/png;base64," in report


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


def test_train_change_reruns_training_and_after_with_zero_llm_steps(all_run: Path) -> None:
    edit_config(all_run, train={"learning_rate": 5.0e-4})
    run = snakemake(all_run, "-n", "all")
    assert run.returncode == 0, run.output
    assert "rule extract_questions" not in run.output and "rule answer_questions" not in run.output
    for rule in ("train", "fuse", "export_gguf", "evaluate"):
        assert f"rule {rule}:" in run.output, rule
