"""Rule validate_questions: keep valid questions, quarantine the rest with the reason."""

from tubetune.generate.questions import validate_questions
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: validate_questions(
        raw_path=snakemake.input.raw,
        chunks_path=snakemake.input.chunks,
        questions_path=snakemake.output.questions,
        quarantine_path=snakemake.output.quarantine,
        question_config=snakemake.params.questions,
    ),
)
