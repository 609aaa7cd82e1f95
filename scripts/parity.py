"""Rule parity: results/fused vs results/export/gguf/tuned-f16.gguf and results/export/hf -> parity.json."""

from tubetune.evaluate.parity import parity
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: parity(
        snakemake.input.test,
        snakemake.input.fused,
        snakemake.input.gguf,
        snakemake.input.hf,
        snakemake.output.parity,
        snakemake.params.settings,
        threads=snakemake.threads,
    ),
)
