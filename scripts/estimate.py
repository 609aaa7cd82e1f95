"""Rule estimate: every request the next run would send, cache hits vs misses, tokens and dollars."""

from tubetune.llm.estimate import estimate
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: estimate(
        chunk_paths=list(snakemake.input.chunks),
        questions_prompt=snakemake.input.questions_prompt,
        answers_prompt=snakemake.input.answers_prompt,
        llm_config=snakemake.params.llm,
        question_config=snakemake.params.questions,
        estimate_json=snakemake.output.json,
        estimate_md=snakemake.output.md,
    ),
)
