"""Rule estimate: every request the next run would send, cache hits vs misses, tokens and dollars."""

from tubetune.llm.estimate import estimate_step
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: estimate_step(
        chunk_paths=list(snakemake.input.chunks),
        questions_prompt=snakemake.input.questions_prompt,
        answers_prompt=snakemake.input.answers_prompt,
        llm_config=snakemake.params.llm,
        question_config=snakemake.params.questions,
        out_json=snakemake.output.json,
        out_md=snakemake.output.md,
    ),
)
