"""Rerun guarantees, pinned on the jobs and reasons of the real Snakemake.

- a ``train.*`` change reruns training and what follows, with zero LLM calls;
- a dataset filter change reruns the dataset and what follows, nothing upstream;
- an edit to the code behind a rule (scripts/tubetune) reruns that rule;
- a prompt edit reruns its LLM step, and only the requests that changed miss the cache
  (proved for real against the fake Anthropic server: every request it gets is a miss);
- an edit to one transcript reruns only its shard's jobs and sends only that chunk's requests to the API.

Each half starts from a copy of the test session's finished tiny ``all`` run (``tiny_all_run`` in
tests/conftest.py), not from a run of its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fake_anthropic import FakeAnthropic, RecordedRequest, Reply, ok
from workflow import Run, copy_run, dry_run_jobs, dry_run_reasons, edit_config, run_jobs, snakemake

pytestmark = pytest.mark.slow

LLM_RULES = {"questions", "answers"}
SOURCE_RULES = {"list_videos", "transcripts"}
UPSTREAM_OF_DATASET = LLM_RULES | SOURCE_RULES | {"review_index"}
SUMMARY = re.compile(r"(\d+) requests, (\d+) cache hits, (\d+) backend calls")


def llm_summary(log: Path) -> tuple[int, int, int]:
    """(requests, cache hits, backend calls) from the summary line of an LLM rule's log."""
    match = SUMMARY.search(log.read_text(encoding="utf-8"))
    assert match, f"no LLM summary in {log}"
    requests, hits, calls = (int(n) for n in match.groups())
    return requests, hits, calls


def ok_run(run: Run) -> Run:
    assert run.returncode == 0, run.output[-6000:]
    return run


# ---------------------------------------------------------------------------- the data half


@pytest.fixture(scope="module")
def dataset_run(tiny_all_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sample channel built (cache-only, no API key): a copy of the finished run, which the tests
    of this half change one after the other."""
    workdir = copy_run(tiny_all_run, tmp_path_factory.mktemp("rerun") / "wf")
    assert "Nothing to be done" in ok_run(snakemake(workdir, "-n", "dataset")).output
    yield workdir


def test_dataset_filter_change_reruns_only_the_dataset(dataset_run: Path) -> None:
    config = dataset_run / "config.yaml"
    original = config.read_text(encoding="utf-8")
    edit_config(dataset_run, dataset={"min_answer_chars": 60})
    try:
        run = ok_run(snakemake(dataset_run, "-n", "dataset"))
    finally:
        config.write_text(original, encoding="utf-8")
    assert dry_run_jobs(run) == {"build_dataset": 1, "dataset": 1}
    (reason,) = dry_run_reasons(run)["build_dataset"]
    assert reason.startswith("Params have changed since last execution")
    assert "'min_answer_chars': 60" in reason
    # with the config restored the dataset is up to date again
    assert "Nothing to be done" in ok_run(snakemake(dataset_run, "-n", "dataset")).output


def test_dataset_code_change_reruns_the_dataset(dataset_run: Path) -> None:
    module = dataset_run / "scripts" / "tubetune" / "dataset" / "build.py"
    original = module.read_text(encoding="utf-8")
    module.write_text(original + "\n# an edit to the dataset code\n", encoding="utf-8")
    try:
        run = ok_run(snakemake(dataset_run, "-n", "dataset"))
    finally:
        module.write_text(original, encoding="utf-8")
    assert dry_run_jobs(run) == {"build_dataset": 1, "dataset": 1}
    (reason,) = dry_run_reasons(run)["build_dataset"]
    # the code param: a hash of the source of the modules build_dataset runs
    changed = re.search(r"before: '([0-9a-f]{16})' now: '([0-9a-f]{16})'", reason)
    assert reason.startswith("Params have changed since last execution") and changed, reason
    assert changed.group(1) != changed.group(2)
    assert "Nothing to be done" in ok_run(snakemake(dataset_run, "-n", "dataset")).output


class ScriptedByRequest(FakeAnthropic):
    """The fake Anthropic API, replying to each request with valid JSON for that request.

    Question extraction gets two well-formed questions, answering gets one answer per numbered
    question: the workflow's checks pass, so every request it sends is a first-time cache miss
    (no re-asks).
    """

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        schema = body["output_config"]["format"]["schema"]
        user = body["messages"][-1]["content"]
        if "answers" in schema["properties"]:
            numbers = re.findall(r"^(\d+)\. ", user.split("Questions:", 1)[1], flags=re.MULTILINE)
            return ok({"answers": [
                {"index": int(n), "answerable": True, "reason": "",
                 "answer": f"Answer {n}: give the dough the time it needs and watch it, not the clock."}
                for n in numbers
            ]})
        return ok({"questions": [
            "How long should the dough rest after the first fold?",
            "What does the dough look like when it has risen enough?",
        ]})


def kind(request: RecordedRequest) -> str:
    properties = request.body["output_config"]["format"]["schema"]["properties"]
    return "answers" if "answers" in properties else "questions"


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeAnthropic, dict[str, str]]]:
    """The request-aware fake API and the environment that points the anthropic SDK at it."""
    with ScriptedByRequest() as server:
        yield server, {"ANTHROPIC_API_KEY": "sk-ant-test", "ANTHROPIC_BASE_URL": server.base_url}


def chunks_with_questions(workdir: Path) -> set[str]:
    """Chunk ids that have validated questions: one answer request each."""
    chunk_ids: set[str] = set()
    for path in (workdir / "results" / "questions").glob("s*/*.jsonl"):
        if path.name.endswith(".quarantine.jsonl"):
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            chunk_ids.add(json.loads(line)["chunk_id"])
    return chunk_ids


def new_cache_entries(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((workdir / "cache" / "llm").glob("??/*.json"))]


def test_answer_prompt_edit_reruns_answering_and_misses_only_its_requests(
    dataset_run: Path, fake_api: tuple[FakeAnthropic, dict[str, str]]
) -> None:
    server, env = fake_api
    prompt = dataset_run / "data" / "prompts" / "answer_questions.md"
    text = prompt.read_text(encoding="utf-8")
    prompt.write_text(text.replace("Rules:\n", "Rules:\n- Mention the time or temperature first.\n", 1))

    dry = ok_run(snakemake(dataset_run, "-n", "dataset"))
    jobs = dry_run_jobs(dry)
    shards = sorted(p.name for p in (dataset_run / "results" / "qa").iterdir())
    assert jobs == {
        "answers": len(shards), "review_index": 1, "build_dataset": 1, "llm_ledger": 1, "dataset": 1,
    }
    reasons = dry_run_reasons(dry)
    assert reasons["answers"] == {"Updated input files: data/prompts/answer_questions.md"}
    assert all("Input files updated by another job" in r for r in reasons["build_dataset"])

    run = ok_run(snakemake(dataset_run, "dataset", env=env))
    assert {job.rule for job in run_jobs(run)} == set(jobs)
    # Every answer request changed (they share the prompt), none of the extraction requests did.
    expected = chunks_with_questions(dataset_run)
    assert len(server.message_requests()) == len(expected) > 0
    assert {kind(r) for r in server.message_requests()} == {"answers"}
    assert all(r.body["system"].count("Mention the time or temperature first.") == 1
               for r in server.message_requests())
    assert len(new_cache_entries(dataset_run)) == len(expected)
    for shard in shards:
        requests, hits, calls = llm_summary(dataset_run / "logs" / "answers" / f"{shard}.log")
        assert hits == 0 and calls == requests
    # a video without validated questions has an empty qa file: read them all
    qa = [json.loads(line) for path in sorted((dataset_run / "results" / "qa").glob("s*/*.jsonl"))
          for line in path.read_text(encoding="utf-8").splitlines()]
    assert qa and all(row["answer"].startswith("Answer ") for row in qa)
    # A rerun replays the stored responses: no job, no request.
    assert "Nothing to be done" in ok_run(snakemake(dataset_run, "-n", "dataset")).output


def shard_of(workdir: Path, video: str) -> str:
    """The shard folder that holds ``video``'s chunks."""
    (path,) = (workdir / "results" / "chunks").glob(f"s*/{video}.jsonl")
    return path.parent.name


def edit_one_chunk(workdir: Path, video: str) -> tuple[str, str]:
    """Change one word in the middle of one chunk of ``video``'s transcript; return (chunk id, new word)."""
    chunks_file = workdir / "results" / "chunks" / shard_of(workdir, video) / f"{video}.jsonl"
    chunks = [json.loads(line) for line in chunks_file.read_text().splitlines()]
    assert len(chunks) >= 2, "pick a video with more than one chunk"
    chunk = chunks[1]
    path = workdir / "data" / "sample" / "transcripts" / f"{video}.json"
    snippets = json.loads(path.read_text(encoding="utf-8"))
    for snippet in snippets:
        words = snippet["text"].split()
        if chunk["start"] < snippet["start"] < chunk["end"] - 5 and len(words) >= 5:
            words[2] = "kumquat"  # the word count, so every chunk boundary, stays the same
            snippet["text"] = " ".join(words)
            break
    else:
        raise AssertionError(f"no snippet to edit in {chunk['chunk_id']}")
    path.write_text(json.dumps(snippets, indent=1), encoding="utf-8")
    return str(chunk["chunk_id"]), "kumquat"


def test_transcript_edit_misses_only_the_changed_chunk(
    dataset_run: Path, fake_api: tuple[FakeAnthropic, dict[str, str]]
) -> None:
    server, env = fake_api
    video = "Jk5Lz0Xc2Vb"
    shard = shard_of(dataset_run, video)
    results = dataset_run / "results"
    before = (results / "chunks" / shard / f"{video}.jsonl").read_text()
    others = {
        path: path.read_bytes()
        for step in ("chunks", "questions", "qa", "review")
        for path in (results / step).rglob("*.*")
        if path.is_file() and not path.name.startswith(video) and path.parent.name.startswith("s")
    }
    chunk_id, word = edit_one_chunk(dataset_run, video)

    run = ok_run(snakemake(dataset_run, "dataset", env=env))
    jobs = run_jobs(run)
    shard_jobs = sorted((job.rule, job.wildcards.get("shard")) for job in jobs if "shard" in job.wildcards)
    assert shard_jobs == [("answers", shard), ("questions", shard), ("transcripts", shard)]
    # Every other video's files, also those of the shard's other videos, are byte for byte the same.
    assert others and all(path.read_bytes() == content for path, content in others.items())

    # Chunk boundaries did not move: only the edited chunk's text differs.
    after = (results / "chunks" / shard / f"{video}.jsonl").read_text()
    changed = [
        json.loads(new)["chunk_id"]
        for old, new in zip(before.splitlines(), after.splitlines(), strict=True)
        if old != new
    ]
    assert changed == [chunk_id]

    # Exactly that chunk's two requests reached the API: its extraction, then its answers.
    requests = server.message_requests()
    assert [kind(r) for r in requests] == ["questions", "answers"]
    assert all(word in r.body["messages"][0]["content"] for r in requests)
    # The shard's other chunks were requested again and came from the cache.
    n_chunks = sum(len(p.read_text().splitlines()) for p in (results / "chunks" / shard).glob("*.jsonl"))
    extract = llm_summary(dataset_run / "logs" / "questions" / f"{shard}.log")
    assert extract == (n_chunks, n_chunks - 1, 1)
    answer_log = dataset_run / "logs" / "answers" / f"{shard}.log"
    answer_requests, answer_hits, answer_calls = llm_summary(answer_log)
    assert answer_calls == 1 and answer_hits == answer_requests - 1


# ---------------------------------------------------------------------------- the model half


@pytest.fixture(scope="module")
def trained_run(tiny_all_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sample channel trained with the tiny-test profile: a copy of the finished run."""
    workdir = copy_run(tiny_all_run, tmp_path_factory.mktemp("rerun_train") / "wf")
    yield workdir


def test_train_change_reruns_training_with_zero_llm_calls(trained_run: Path) -> None:
    rule = "train_run"  # one job per sweep run; `train` is the target
    llm_logs = sorted((trained_run / "logs" / "questions").glob("*.log")) + sorted(
        (trained_run / "logs" / "answers").glob("*.log")
    )
    assert llm_logs and all(llm_summary(log)[2] == 0 for log in llm_logs)  # served by the seed cache
    stamps = {log: log.stat().st_mtime_ns for log in llm_logs}
    edit_config(trained_run, train={"learning_rate": 5.0e-4})

    dry = ok_run(snakemake(trained_run, "-n", "train"))
    jobs = dry_run_jobs(dry)
    assert rule in jobs, jobs
    assert not set(jobs) & (UPSTREAM_OF_DATASET | {"build_dataset", "base_model"}), jobs
    reasons = dry_run_reasons(dry)[rule]
    assert all(r.startswith("Params have changed since last execution") for r in reasons), reasons
    assert all("'learning_rate': 0.0005" in r for r in reasons)
    everything = dry_run_jobs(ok_run(snakemake(trained_run, "-n", "all")))
    assert rule in everything and not set(everything) & (UPSTREAM_OF_DATASET | {"build_dataset"}), everything

    # For real: training reruns, no LLM step runs, no request is made (no API key is set, so a
    # cache miss would have failed the run), and nothing is written to the LLM cache.
    run = ok_run(snakemake(trained_run, "train"))
    ran = {job.rule for job in run_jobs(run)}
    assert rule in ran and not ran & (UPSTREAM_OF_DATASET | {"build_dataset"}), ran
    assert {log: log.stat().st_mtime_ns for log in llm_logs} == stamps
    assert not list((trained_run / "cache" / "llm").glob("??/*.json"))
    summaries = list((trained_run / "results" / "train").rglob("summary.json"))
    assert summaries
    assert all(json.loads(p.read_text())["settings"]["learning_rate"] == 5.0e-4 for p in summaries)


def test_code_edits_rerun_the_rules_that_import_the_module_and_no_other(tiny_all_copy: Path) -> None:
    """Code versions follow imports: train/memory.py is imported by train/runner.py, not by train.py;
    tubetune.errors is left out (editing a message retrains nothing)."""
    package = tiny_all_copy / "scripts" / "tubetune"
    memory = package / "train" / "memory.py"
    original = memory.read_text(encoding="utf-8")
    memory.write_text(original + "\n# an edit to the memory estimate\n", encoding="utf-8")
    jobs = dry_run_jobs(ok_run(snakemake(tiny_all_copy, "-n", "all")))
    assert jobs.get("train_run") == 1 and "build_dataset" not in jobs and "base_model" not in jobs, jobs
    memory.write_text(original, encoding="utf-8")
    assert "Nothing to be done" in ok_run(snakemake(tiny_all_copy, "-n", "all")).output

    errors = package / "errors.py"
    errors.write_text(errors.read_text(encoding="utf-8") + "\n# a reworded message\n", encoding="utf-8")
    assert "Nothing to be done" in ok_run(snakemake(tiny_all_copy, "-n", "all")).output
