"""Rule export_gguf: results/model/base or results/fused -> results/export/gguf/{model}-{qtype}.gguf."""

from tubetune.export.gguf import export_gguf
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: export_gguf(
        snakemake.input.model,
        snakemake.output.gguf,
        variant=snakemake.wildcards.model,
        qtype=snakemake.wildcards.qtype,
        tokenizer_pre=snakemake.params.tokenizer_pre,
        base=snakemake.params.base,
    ),
)
