"""The LLM passes of the real Snakemake workflow against the fake Anthropic API, with an empty cache:
online with several requests in flight under the llm_requests limit, batch mode, the estimate before
the run and the ledger after it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import FakeAnthropic, Latency, channel_responder
from test_rerun import edit_one_chunk
from workflow import SNAKEMAKE, Run, copy_workflow, dry_run_jobs, edit_config, run_jobs, snakemake

pytestmark = pytest.mark.slow


def ok_run(run: Run) -> Run:
    assert run.returncode == 0, run.output[-6000:]
    return run


def read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def cache_usage(workdir: Path) -> dict[str, int]:
    """Token totals of every reply stored in the writable cache (what the fake server returned)."""
    totals: dict[str, int] = {}
    for path in (workdir / "cache" / "llm").glob("??/*.json"):
        for name, value in read(path)["response"]["usage"].items():
            totals[name] = totals.get(name, 0) + int(value)
    return totals


def api_env() -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": "sk-ant-test"}


def setup_workdir(root: Path, fake: FakeAnthropic, videos: int | None = None, **llm: Any) -> Path:
    workdir = copy_workflow(root)
    if videos is not None:
        edit_config(workdir, source={"max_videos": videos})
    edit_config(workdir, llm={"seed_cache_dirs": [], "base_url": fake.base_url, "batch_poll_s": 0.1, **llm})
    return workdir


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(latency=Latency(first_token_s=0.4)) as server:
        server.respond_with(channel_responder)
        yield server


def test_online_estimate_then_run_then_ledger(tmp_path: Path, fake: FakeAnthropic) -> None:
    workdir = setup_workdir(tmp_path, fake, videos=4, concurrency=3)
    # the estimate needs neither a key nor the API
    ok_run(snakemake(workdir, "estimate"))
    assert fake.backend_calls() == 0
    estimate = read(workdir / "results" / "llm" / "estimate.json")
    before = fake.backend_calls()

    ok_run(snakemake(workdir, "dataset", "--resources", "llm_requests=3", env=api_env()))
    calls = fake.backend_calls() - before
    assert 1 < fake.max_in_flight <= 3  # 2 cores: two jobs could run at once; the limit holds them
    ledger = read(workdir / "results" / "llm" / "ledger.json")
    total = ledger["total"]
    assert total["calls"] == calls
    usage = cache_usage(workdir)
    assert total["input_tokens"] == usage["input_tokens"]
    assert total["output_tokens"] == usage["output_tokens"]
    assert total["dollars"] > 0
    by_pass = {row["pass"]: row for row in ledger["rows"]}
    passes = estimate["passes"]
    # every question-pass miss the estimate saw is a call of the run (the fake never needs a re-ask)
    assert passes["questions"]["misses"] == by_pass["questions"]["calls"]
    assert by_pass["questions"]["mode"] == "online"

    # a second estimate sees every request of the dataset passes in the cache; the judge's (on by
    # default) stay projected until the models have answered
    ok_run(snakemake(workdir, "estimate"))
    again = read(workdir / "results" / "llm" / "estimate.json")
    assert again["passes"]["questions"]["misses"] == again["passes"]["answers"]["misses"] == 0
    assert again["passes"]["judge"]["misses"] == again["passes"]["judge"]["projected"] > 0

    # enabling a pass reruns the estimate, which then has its row
    edit_config(workdir, quality={"enabled": True})
    assert dry_run_jobs(ok_run(snakemake(workdir, "-n", "estimate"))) == {"estimate": 1}
    edit_config(workdir, quality={"enabled": False})

    # a change of delivery settings reruns nothing; a price change reruns the ledger alone
    edit_config(workdir, llm={"concurrency": 5, "max_retries": 1, "timeout_s": 30})
    assert "Nothing to be done" in ok_run(snakemake(workdir, "-n", "dataset")).output
    edit_config(
        workdir,
        llm={
            "prices": {
                "claude-sonnet-4-6": {
                    "input": 1.0,
                    "output": 1.0,
                    "cache_write": 1.0,
                    "cache_read": 1.0,
                    "batch_discount": 0.5,
                }
            }
        },
    )
    assert dry_run_jobs(ok_run(snakemake(workdir, "-n", "dataset"))) == {"llm_ledger": 1, "dataset": 1}


def test_batch_mode_sends_every_miss_in_batches_and_the_videos_read_the_cache(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    fake.batch_processing_s = 0.5
    messages_before = len(fake.message_requests())
    items_before = len(fake.batch_items_submitted())
    batches_before = len(fake.batches)
    workdir = setup_workdir(tmp_path, fake, mode="batch")
    ok_run(snakemake(workdir, "dataset", env=api_env()))
    assert len(fake.message_requests()) == messages_before  # no online call at all
    items = len(fake.batch_items_submitted()) - items_before
    assert items > 0 and len(fake.batches) - batches_before == 2  # one batch per pass
    for log in (workdir / "logs" / "questions").glob("*.log"):
        assert " 0 backend calls" in log.read_text(encoding="utf-8")
    for log in (workdir / "logs" / "answers").glob("*.log"):
        assert " 0 backend calls" in log.read_text(encoding="utf-8")
    ledger = read(workdir / "results" / "llm" / "ledger.json")
    assert ledger["total"]["calls"] == items
    assert {row["mode"] for row in ledger["rows"]} == {"batch"}
    assert ledger["total"]["input_tokens"] == cache_usage(workdir)["input_tokens"]
    assert "Nothing to be done" in ok_run(snakemake(workdir, "-n", "dataset")).output

    # one edited transcript: the passes rerun and send only its requests; the other videos stay put
    edit_one_chunk(workdir, "Jk5Lz0Xc2Vb")
    items_before = len(fake.batch_items_submitted())
    run = ok_run(snakemake(workdir, "dataset", env=api_env()))
    counts = Counter(job.rule for job in run_jobs(run))
    assert counts["questions"] == 1 and counts["answers"] == 1, counts
    assert counts["batch_questions"] == 1 and counts["batch_answers"] == 1, counts
    assert len(fake.batch_items_submitted()) - items_before == 2  # that chunk's extraction and answers


def test_batch_run_killed_while_polling_resumes_without_sending_twice(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    """kill -9 the whole Snakemake run while its batch pass polls; unlock; run again: the new run
    polls the batch in flight and sends no request a second time."""
    fake.batch_processing_s = 4.0
    items_before = len(fake.batch_items_submitted())
    batches_before = set(fake.batches)
    workdir = setup_workdir(tmp_path, fake, videos=3, mode="batch", batch_poll_s=0.2)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")} | api_env()
    run = subprocess.Popen(
        [SNAKEMAKE, "--cores", "2", "dataset"],
        cwd=workdir,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state = workdir / "cache" / "llm" / "batches" / "questions.json"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if state.is_file() and any(entry.get("id") for entry in read(state)["batches"].values()):
                break
            assert run.poll() is None, "the run ended before its batch was created"
            time.sleep(0.1)
        else:
            raise AssertionError("no batch was created")
        time.sleep(0.5)  # polling now
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)
    assert not (workdir / "results" / "llm" / "batch" / "questions.json").exists()
    in_flight = set(fake.batches) - batches_before
    assert len(in_flight) == 1

    ok_run(snakemake(workdir, "--unlock"))
    ok_run(snakemake(workdir, "dataset", env=api_env()))
    submitted = fake.batch_items_submitted()[items_before:]
    assert len(submitted) == len(set(submitted))  # no request sent twice
    assert len(set(fake.batches) - batches_before) == 2  # the resumed questions batch + the answers batch
    report = read(workdir / "results" / "llm" / "batch" / "questions.json")
    assert report["batches"] == 0 and report["resumed_in_flight"] == report["requests"]
