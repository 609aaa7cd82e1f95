"""Rule export_hf: the fused model -> results/export/hf (float16 safetensors, tokenizer, model card)."""

from tubetune.export.hf import export_hf
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: export_hf(
        snakemake.input.model,
        snakemake.input.stats,
        snakemake.input.summary,
        snakemake.output.hf,
        dtype=snakemake.params.dtype,
        base=snakemake.params.base,
        channel=snakemake.params.channel,
        run=snakemake.params.run,
    ),
)
