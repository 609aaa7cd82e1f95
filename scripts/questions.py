"""Rule questions: pass 1 (questions per chunk, cached LLM calls) and validation for one shard of videos."""

from tubetune.generate.shard import QuestionsShard, questions_shard
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: questions_shard(
        QuestionsShard(
            shard=snakemake.wildcards.shard,
            videos=snakemake.params.videos,
            chunks=snakemake.input.chunks,
            raw=snakemake.output.raw,
            questions=snakemake.output.questions,
        ),
        prompt_path=snakemake.input.prompt,
        llm_config={**snakemake.config["llm"], "concurrency": max(1, snakemake.resources.llm_requests)},
        question_config=snakemake.params.questions,
        usage_path=snakemake.output.usage,
        batch_report=snakemake.input.batch[0] if snakemake.input.batch else None,
    ),
)
