"""Rule batch_answers (llm.mode: batch): every video's answer requests as Message Batches."""

from tubetune.generate.answers import batch_answers
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: batch_answers(
        question_paths=snakemake.input.questions,
        chunk_paths=snakemake.input.chunks,
        prompt_path=snakemake.input.prompt,
        report_path=snakemake.output.report,
        llm_config=snakemake.config["llm"],
    ),
)
