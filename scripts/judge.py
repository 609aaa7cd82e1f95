"""Rule judge: an LLM compares the base and the tuned test answers in both orders (cached LLM calls)."""

from pathlib import Path

from tubetune.evaluate.judge import JudgeOutputs, judge
from tubetune.logs import run_step
from tubetune.shards import video_files

run_step(
    snakemake.log[0],
    lambda: judge(
        answers_path=snakemake.input.answers,
        chunk_paths=video_files(snakemake.input.chunks, ".jsonl"),
        prompt_path=snakemake.input.prompt,
        outputs=JudgeOutputs(
            rows=Path(snakemake.output.rows),
            summary=Path(snakemake.output.summary),
            usage=Path(snakemake.output.usage),
        ),
        llm_config={**snakemake.config["llm"], "concurrency": max(1, snakemake.resources.llm_requests)},
        judge_config=snakemake.config["judge"],
        bootstrap_resamples=snakemake.params.bootstrap["bootstrap_resamples"],
        seed=snakemake.params.bootstrap["seed"],
    ),
)
