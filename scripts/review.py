"""Rule review: one Markdown page per video."""

from tubetune.generate.review import review
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: review(
        transcript_path=snakemake.input.transcript,
        qa_path=snakemake.input.qa,
        dropped_path=snakemake.input.dropped,
        quarantine_path=snakemake.input.quarantine,
        page_path=snakemake.output.page,
    ),
)
