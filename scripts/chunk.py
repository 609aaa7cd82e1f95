"""Rule chunk: cut one transcript into chunks."""

from tubetune.generate.chunk import chunk
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: chunk(
        snakemake.input.transcript, snakemake.output.chunks, snakemake.output.status, snakemake.params.chunk
    ),
)
