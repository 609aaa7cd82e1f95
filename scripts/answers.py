"""Rule answers: pass 2 (each question answered from its chunk, cached LLM calls) and the review pages
for one shard of videos."""

from tubetune.generate.shard import AnswersShard, answers_shard
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: answers_shard(
        AnswersShard(
            shard=snakemake.wildcards.shard,
            videos=snakemake.params.videos,
            transcripts=snakemake.input.transcripts,
            chunks=snakemake.input.chunks,
            questions=snakemake.input.questions,
            qa=snakemake.output.qa,
            review=snakemake.output.review,
        ),
        prompt_path=snakemake.input.prompt,
        llm_config={**snakemake.config["llm"], "concurrency": max(1, snakemake.resources.llm_requests)},
        usage_path=snakemake.output.usage,
        batch_report=snakemake.input.batch[0] if snakemake.input.batch else None,
    ),
)
