"""Rule answer_questions: pass 2, each question answered from its chunk only (cached LLM calls)."""

from tubetune.generate.answers import answer_questions
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: answer_questions(
        questions_path=snakemake.input.questions,
        chunks_path=snakemake.input.chunks,
        prompt_path=snakemake.input.prompt,
        qa_path=snakemake.output.qa,
        dropped_path=snakemake.output.dropped,
        llm_config={**snakemake.config["llm"], "concurrency": max(1, snakemake.resources.llm_requests)},
        usage_path=snakemake.output.usage,
        batch_report=snakemake.input.batch[0] if snakemake.input.batch else None,
    ),
)
