"""The data half through real Snakemake on a copy of the repository (sample channel, no network).

The finished run is the test session's tiny ``all`` run (``tiny_all_run`` in tests/conftest.py): its data
half is the default config's. The config checks run no job and belong to the fast tier.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dataset_inputs import numbered_questions, schema_kind
from fake_anthropic import FakeAnthropic, Reply, ok
from workflow import copy_workflow, dry_run_jobs, dry_run_reasons, edit_config, snakemake


@pytest.fixture
def dataset_run(tiny_all_run: Path) -> Path:
    """The finished run (read-only, dry-runs only)."""
    return tiny_all_run


@pytest.mark.slow
def test_dataset_outputs(dataset_run: Path) -> None:
    out = dataset_run / "results" / "dataset"
    splits = {}
    for name in ("train", "valid", "test"):
        rows = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert rows, name
        for row in rows:
            roles = [m["role"] for m in row["messages"]]
            assert roles == ["system", "user", "assistant"]
            assert "Crumb Lab" in row["messages"][0]["content"]
        splits[name] = {row["meta"]["video_id"] for row in rows}
    assert not splits["train"] & splits["valid"]
    assert not splits["train"] & splits["test"]
    assert not splits["valid"] & splits["test"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["examples"]["total"] == sum(stats["examples"][n] for n in ("train", "valid", "test"))
    # The sample's reference responses include flawed and unanswerable questions: each drop is counted.
    assert any(key.startswith("validate:") for key in stats["dropped"])
    assert any(key.startswith("answer: not answered by its chunk") for key in stats["dropped"])
    skipped = {v["video_id"]: v["reason"] for v in stats["skipped_videos"]}
    assert "Rf4Tg6Yh1Uj" in skipped and "Ik9Ol2Pz5Xa" in skipped  # the short and the live stream
    assert (out / "lengths.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_review_pages_link_timestamps(dataset_run: Path) -> None:
    (page_path,) = (dataset_run / "results" / "review").glob("s*/Jk5Lz0Xc2Vb.md")
    page = page_path.read_text()
    assert page.startswith("# Baking in a Dutch Oven")
    assert "https://youtu.be/Jk5Lz0Xc2Vb?t=" in page
    index = (dataset_run / "results" / "review" / "index.md").read_text()
    assert index.count("](") == 10
    # every link of the index opens its page
    links = re.findall(r"\]\(([^)]+)\)", index)
    assert f"{page_path.parent.name}/Jk5Lz0Xc2Vb.md" in links
    assert all((dataset_run / "results" / "review" / link).is_file() for link in links)


@pytest.mark.slow
def test_default_config_makes_zero_backend_calls(dataset_run: Path) -> None:
    # No ANTHROPIC_API_KEY was set: a cache miss would have failed the run. Nothing was written to the
    # writable cache either, so every response came from the sample's reference cache.
    cache = dataset_run / "cache" / "llm"
    assert not list(cache.glob("??/*.json"))
    logs = sorted((dataset_run / "logs" / "questions").glob("s*.log"))
    assert len(logs) == 4 and all(" 0 backend calls" in log.read_text() for log in logs)


@pytest.mark.slow
def test_rerun_is_a_no_op(dataset_run: Path) -> None:
    run = snakemake(dataset_run, "-n", "dataset")
    assert run.returncode == 0, run.output
    assert "Nothing to be done" in run.output


@pytest.mark.slow
def test_question_count_change_reruns_only_affected_rules(tiny_all_copy: Path) -> None:
    edit_config(tiny_all_copy, questions={"per_1k_tokens": 9})
    run = snakemake(tiny_all_copy, "-n", "dataset")
    assert run.returncode == 0, run.output
    jobs = dry_run_jobs(run)
    assert jobs == {
        "questions": 4, "answers": 4, "review_index": 1, "llm_ledger": 1, "build_dataset": 1, "dataset": 1,
    }, jobs
    reasons = dry_run_reasons(run)
    assert all(r.startswith("Params have changed since last execution") for r in reasons["questions"])
    assert all("'per_1k_tokens': 9" in r for r in reasons["questions"])
    assert all("Input files updated by another job" in r for r in reasons["answers"])


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        (
            "dataset",
            {"near_duplicat_threshold": 0.8},
            "unknown key 'dataset.near_duplicat_threshold' (did you mean 'near_duplicate_threshold'?)",
        ),
        ("chunk", {"max_tokens": 10}, "chunk.max_tokens: 10 is less than the minimum of 50"),
        ("llm", {"backend": "openai"}, "llm.backend: 'openai' is not one of ['anthropic', 'llama_cpp']"),
    ],
)
def test_bad_config_fails_before_any_job(
    tmp_path: Path, section: str, values: dict[str, object], message: str
) -> None:
    workdir = copy_workflow(tmp_path)
    edit_config(workdir, **{section: values})
    run = snakemake(workdir, "-n", "dataset")
    assert run.returncode != 0
    assert message in run.output
    assert not (workdir / "results").exists()


def _pass_responder(body: dict[str, Any]) -> Reply:
    """The quality judge's ratings (pairs about salt rated not grounded) and one paraphrase per
    question, made of words drawn at random (seeded by the question) so that they are all distinct."""
    numbered = numbered_questions(body)
    if schema_kind(body) == "ratings":
        ratings = [
            {
                "index": i,
                "grounded": 2 if "salt" in q.lower() else 5,
                "self_contained": 5,
                "useful": 5,
                "reason": "the excerpt says nothing about salt" if "salt" in q.lower() else "supported",
            }
            for i, q in numbered
        ]
        return ok(json.dumps({"ratings": ratings}), input_tokens=900, output_tokens=80)
    words = [f"{a}{b}" for a in ("bro", "cla", "dri", "fen", "glo", "hum", "jar", "kel") for b in "aeiouy"]
    items = [
        {"index": i, "questions": [" ".join(random.Random(q).sample(words, 6)).capitalize() + "?"]}
        for i, q in numbered
    ]
    return ok(json.dumps({"paraphrases": items}), input_tokens=400, output_tokens=60)


@pytest.mark.slow
def test_quality_and_augment_passes_run_in_build_dataset_and_count_in_the_ledger(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    with FakeAnthropic() as server:
        server.respond_with(_pass_responder)
        edit_config(
            workdir, quality={"enabled": True}, augment={"paraphrases": 1}, llm={"base_url": server.base_url}
        )
        run = snakemake(workdir, "dataset", env={"ANTHROPIC_API_KEY": "sk-ant-test"})
        assert run.returncode == 0, run.output[-6000:]
        kinds = Counter(schema_kind(r.body) for r in server.message_requests())
        assert set(kinds) == {"ratings", "paraphrases"}  # the sample's Q&A come from the seed cache
        again = snakemake(workdir, "-n", "dataset")
        assert "Nothing to be done" in again.output, again.output
    out = workdir / "results" / "dataset"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["quality"]["dropped"] == stats["quality"]["dropped_by"]["not grounded"] > 0
    assert stats["augment"]["added"] > 0
    assert stats["augment"]["train_after"] == stats["augment"]["train_before"] + stats["augment"]["added"]
    for name in ("valid", "test"):
        assert "augmented_from" not in (out / f"{name}.jsonl").read_text()
    ledger = json.loads((workdir / "results" / "llm" / "ledger.json").read_text())
    rows = {row["pass"]: row for row in ledger["rows"]}
    assert rows["quality"]["calls"] == kinds["ratings"] and rows["augment"]["calls"] == kinds["paraphrases"]
    assert rows["quality"]["input_tokens"] == 900 * kinds["ratings"]
    assert ledger["total"]["calls"] == kinds["ratings"] + kinds["paraphrases"]
    assert "[results/llm/ledger.md](../llm/ledger.md)" in (out / "stats.md").read_text()


@pytest.mark.slow
def test_the_default_ledger_leaves_out_the_passes_that_are_off(dataset_run: Path) -> None:
    ledger = json.loads((dataset_run / "results" / "llm" / "ledger.json").read_text())
    assert [row["pass"] for row in ledger["rows"]] == ["questions", "answers"]
    for name in ("quality", "augment"):  # written anyway, as zero records
        record = json.loads((dataset_run / "results" / "llm" / "usage" / f"{name}.json").read_text())
        assert record["enabled"] is False and record["requests"] == 0
