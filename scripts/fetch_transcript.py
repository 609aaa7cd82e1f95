"""Rule fetch_transcript: one video's transcript (see tubetune.source)."""

from tubetune.logs import run_step
from tubetune.source import fetch_transcript

run_step(
    snakemake.log[0],
    lambda: fetch_transcript(
        snakemake.params.video,
        snakemake.params.source,
        next(iter(snakemake.input.transcript), None),
        snakemake.output.transcript,
    ),
)
