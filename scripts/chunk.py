"""Rule chunk: cut one transcript into chunks."""

from tubetune.logs import run_step
from tubetune.steps import chunk_step

run_step(
    snakemake.log[0],
    lambda: chunk_step(
        snakemake.input[0], snakemake.output.chunks, snakemake.output.status, snakemake.params.chunk
    ),
)
