"""Scale benchmark: the ``dataset`` target on a synthetic local channel of many videos (default 10,000).

Not a test: run it by hand and read the table.

    .venv/bin/python bench/many_videos.py                      # 10,000 videos, 64 shards
    .venv/bin/python bench/many_videos.py --videos 300 --shards 8

The channel is bench/llm_throughput.py's synthetic one (a ``local`` source with a saved listing; 2,000-3,000
words per video, about 6 chunks each). In one copy of the workflow (tests/workflow.py ``copy_workflow``):

1. ``list_videos`` (the checkpoint), then a dry-run of ``dataset`` that plans every job: its wall time and
   the number of jobs.
2. ``dataset`` with an empty LLM cache against the fake Anthropic API (tests/fake_anthropic.py,
   ``channel_responder``, no latency): this fills the cache.
3. A dry-run of ``dataset`` once everything is done ("Nothing to be done").
4. ``results/`` and ``.snakemake/`` removed, then ``dataset`` again with no API key and no server: every
   reply must come from the cache (a miss would fail the run). This is the "dataset from a full cache" time.
5. One word of one transcript changed: ``dataset`` again, with the fake API; the jobs that ran and the
   requests the API got.

Snakemake runs as ``snakemake --cores 2 <target> [--resources llm_requests=16]``; a failed run stops the
benchmark. Results:
``<out>/many_videos.json`` and ``<out>/many_videos.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests"), str(ROOT / "bench")]

from llm_throughput import CHANNEL, write_channel  # noqa: E402

from fake_anthropic import FakeAnthropic, channel_responder  # noqa: E402
from workflow import Run, copy_workflow, dry_run_jobs, edit_config, run_jobs, snakemake  # noqa: E402

logger = logging.getLogger("many_videos")

_STEPS = re.compile(r"^(\d+) of (\d+) steps", re.MULTILINE)


@dataclass
class Step:
    name: str
    command: str
    wall_s: float
    ok: bool
    jobs: dict[str, int] = field(default_factory=dict)
    backend_calls: int | None = None
    note: str = ""


class StepFailed(RuntimeError):
    """A Snakemake run of the benchmark failed: the later steps would measure nothing."""


def timed(
    name: str, workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float
) -> tuple[Step, Run]:
    command = "snakemake --cores 2 " + " ".join(args)
    logger.info("%s: %s", name, command)
    started = time.monotonic()
    run = snakemake(workdir, *args, env=env, timeout=timeout)
    wall = time.monotonic() - started
    ok = run.returncode == 0
    if not ok:
        tail = "\n".join([line for line in run.output.splitlines() if line.strip()][-20:])
        logger.error("%s failed (exit %d):\n%s", name, run.returncode, tail)
    jobs = dry_run_jobs(run) if "-n" in args else dict(Counter(job.rule for job in run_jobs(run)))
    logger.info("%s: %.1f s, %d jobs", name, wall, sum(jobs.values()))
    if not ok:
        raise StepFailed(f"{name} failed (exit {run.returncode}); its output is logged above")
    return Step(name, command, round(wall, 1), ok, jobs), run


def edit_one_word(transcripts: Path) -> str:
    """Change one word of the first transcript (by file name); return the video id."""
    path = sorted(transcripts.glob("*.json"))[0]
    snippets = json.loads(path.read_text(encoding="utf-8"))
    words = snippets[len(snippets) // 2]["text"].split()
    words[0] = "kumquat"
    snippets[len(snippets) // 2]["text"] = " ".join(words)
    path.write_text(json.dumps(snippets), encoding="utf-8")
    return path.stem


def markdown(steps: list[Step], settings: dict[str, object]) -> str:
    lines = [
        f"{settings['videos']} synthetic videos ({settings['words']} words, {settings['chunks']} chunks), "
        f"shards {settings['shards']}, `--cores 2`, load before {settings['load_before']}.",
        "",
        "| step | wall s | jobs | backend calls | note |",
        "|---|---:|---:|---:|---|",
    ]
    for step in steps:
        wall = f"{step.wall_s:.1f}"
        calls = "" if step.backend_calls is None else str(step.backend_calls)
        lines.append(f"| {step.name} | {wall} | {sum(step.jobs.values())} | {calls} | {step.note} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=10_000, help="synthetic videos (default 10,000)")
    parser.add_argument("--shards", type=int, default=64, help="config key shards (default 64)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic transcripts")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per Snakemake run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--keep", action="store_true", help="keep the temp workflow copy (path is logged)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    load_before = round(os.getloadavg()[0], 2)
    work = Path(tempfile.mkdtemp(prefix="tubetune-many-videos-"))
    steps: list[Step] = []
    try:
        channel = work / "channel"
        videos = write_channel(channel, args.videos, args.seed)
        words = sum(video.words for video in videos)
        logger.info("%d synthetic videos, %d words, in %s", len(videos), words, channel)
        workdir = copy_workflow(work / "wf")
        source = {
            "type": "local",
            "channel": CHANNEL,
            "listing": str(channel / "channel.json"),
            "transcripts_dir": str(channel / "transcripts"),
            "max_videos": args.videos,
        }
        edit_config(
            workdir, shards=args.shards, source=source, llm={"cache_dir": "cache/llm", "seed_cache_dirs": []}
        )
        t = args.timeout

        step, _ = timed("list_videos", workdir, "list_videos", timeout=t)
        steps.append(step)
        step, _ = timed("dry-run of dataset, nothing built", workdir, "-n", "dataset", timeout=t)
        steps.append(step)
        step.note = ", ".join(f"{rule} {n}" for rule, n in sorted(step.jobs.items()))

        with FakeAnthropic() as server:
            server.respond_with(channel_responder)
            edit_config(workdir, llm={"base_url": server.base_url})
            env = {"ANTHROPIC_API_KEY": "sk-bench"}
            step, _ = timed(
                "dataset, empty cache (fills it)",
                workdir,
                "dataset",
                "--resources",
                "llm_requests=16",
                env=env,
                timeout=t,
            )
            step.backend_calls = server.backend_calls()
            steps.append(step)
        chunks = sum(1 for path in (workdir / "results" / "chunks").rglob("*.jsonl") for _ in path.open())

        step, _ = timed("dry-run of dataset, all done", workdir, "-n", "dataset", timeout=t)
        steps.append(step)

        shutil.rmtree(workdir / "results")
        shutil.rmtree(workdir / ".snakemake")
        # no API key: a cache miss would fail the run
        step, _ = timed("dataset from the full cache", workdir, "dataset", timeout=t)
        ledger = json.loads((workdir / "results" / "llm" / "ledger.json").read_text(encoding="utf-8"))
        step.backend_calls = int(ledger["total"]["calls"])
        stats = json.loads((workdir / "results" / "dataset" / "stats.json").read_text(encoding="utf-8"))
        step.note = f"{stats['examples']['total']} examples"
        steps.append(step)

        video = edit_one_word(channel / "transcripts")
        with FakeAnthropic() as server:
            server.respond_with(channel_responder)
            edit_config(workdir, llm={"base_url": server.base_url})
            step, _ = timed(
                f"one transcript edited ({video})",
                workdir,
                "dataset",
                "--resources",
                "llm_requests=16",
                env={"ANTHROPIC_API_KEY": "sk-bench"},
                timeout=t,
            )
            step.backend_calls = server.backend_calls()
            steps.append(step)
    finally:
        if args.keep:
            logger.info("workflow copy kept in %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)

    settings: dict[str, object] = {
        "videos": args.videos,
        "words": words,
        "chunks": chunks,
        "shards": args.shards,
        "seed": args.seed,
        "cores": 2,
        "cpu_count": os.cpu_count(),
        "load_before": load_before,
    }
    table = markdown(steps, settings)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "many_videos.json").write_text(
        json.dumps({"settings": settings, "steps": [asdict(s) for s in steps]}, indent=2) + "\n",
        encoding="utf-8",
    )
    (args.out / "many_videos.md").write_text(table, encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
