"""llama.cpp answering speed on a shared CPU: fixed threads vs threads chosen from the free cores.

Not a test: run it by hand and read the table.

    .venv/bin/python bench/llama_threads.py                  # the bundled SmolLM2-135M GGUF
    .venv/bin/python bench/llama_threads.py --gguf results/export/gguf/base-q8_0.gguf --answers 6

Each row loads the GGUF once and answers ``--answers`` sample questions greedily (``--max-tokens``
tokens at most) through :func:`tubetune.evaluate.generate.generate_answers`, as the answer_test rule
does: with the threads fixed at ``--threads`` or at 1, or chosen before each answer from the cores
other processes keep busy (``LlamaThreads``, the rule's default). Each is run on the idle machine
and again while one other process keeps a core busy (a Python busy loop, started before the row and
killed after it). Columns: tokens/s (generated tokens / answering seconds), the threads used, the
load average before the row. Results: ``bench/results/llama_threads.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from tubetune.bundled import bundled_gguf  # noqa: E402
from tubetune.cores import LlamaThreads  # noqa: E402
from tubetune.evaluate.generate import GenerationSettings, generate_answers  # noqa: E402

QUESTIONS = (
    "How long should I preheat a Dutch oven for sourdough?",
    "What feeding ratio keeps a starter from peaking too early overnight?",
    "How can I tell that bulk fermentation is finished?",
    "Why is my sourdough crumb dense and gummy?",
    "How do I keep a starter in the fridge between bakes?",
    "What dough temperature should I aim for during bulk fermentation?",
)


@contextmanager
def busy_core(enabled: bool) -> Iterator[None]:
    """One other process spinning on a core while the block runs (nothing when not ``enabled``)."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if enabled else None
    try:
        if process is not None:
            time.sleep(1.0)
        yield
    finally:
        if process is not None:
            process.kill()
            process.wait()


def measure(gguf: Path, threads: str, busy: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One row: answers with ``threads`` ("auto", or a fixed count) on an idle or a shared CPU."""
    limit = args.threads if threads == "auto" else int(threads)
    settings = GenerationSettings(max_new_tokens=args.max_tokens, seed=0, n_ctx=1024, repeat_penalty=1.0,
                                  n_threads=limit)
    chooser = LlamaThreads(limit) if threads == "auto" else LlamaThreads(limit, probe=lambda: 0.0)
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS[: args.answers]]
    load = os.getloadavg()[0]
    with busy_core(busy):
        run = generate_answers(gguf, prompts, settings, label=f"{threads} threads", threads=chooser)
    return {
        "threads": threads, "busy_core": busy, "tokens": run.completion_tokens,
        "seconds": round(run.seconds, 2), "tokens_per_s": round(run.tokens_per_s, 1),
        "threads_used": run.threads_used, "load_before": round(load, 2),
    }


def markdown(rows: list[dict[str, Any]], gguf: Path) -> str:
    lines = [
        f"llama.cpp greedy answers, `{gguf.name}`, {os.cpu_count()} cores",
        "",
        "| threads | other process on a core | tokens/s | tokens | threads used (answers) | load before |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        used = ", ".join(f"{k}: {v}" for k, v in r["threads_used"].items())
        lines.append(f"| {r['threads']} | {'yes' if r['busy_core'] else 'no'} | {r['tokens_per_s']} | "
                     f"{r['tokens']} | {used} | {r['load_before']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF to answer with (default: bundled)")
    parser.add_argument("--threads", type=int, default=2, help="the job's threads (default 2)")
    parser.add_argument("--answers", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    gguf = args.gguf or bundled_gguf("smollm2-135m-instruct")
    rows = [measure(gguf, threads, busy, args)
            for busy in (False, True) for threads in (str(args.threads), "1", "auto")]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llama_threads.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = markdown(rows, gguf)
    (args.out / "llama_threads.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
