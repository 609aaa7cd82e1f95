"""Rule export_hf: the fused model -> results/export/hf (float16 safetensors, tokenizer, model card)."""

from tubetune.export.hf import export_hf_step
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: export_hf_step(
        snakemake.input.model,
        snakemake.output[0],
        snakemake.params.dtype,
        snakemake.input.stats,
        snakemake.input.summary,
        snakemake.params.base,
        snakemake.params.channel,
        snakemake.params.run,
    ),
)
