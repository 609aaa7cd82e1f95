"""Rule extract_questions: pass 1, questions per chunk from the LLM (cached)."""

from tubetune.generate.questions import extract_questions
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: extract_questions(
        chunks_path=snakemake.input.chunks,
        prompt_path=snakemake.input.prompt,
        questions_path=snakemake.output.questions,
        llm_config={**snakemake.config["llm"], "concurrency": max(1, snakemake.resources.llm_requests)},
        question_config=snakemake.params.questions,
        usage_path=snakemake.output.usage,
        batch_report=snakemake.input.batch[0] if snakemake.input.batch else None,
    ),
)
