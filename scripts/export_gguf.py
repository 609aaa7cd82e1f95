"""Rule export_gguf: results/model/base or results/fused -> results/export/gguf/{model}-{qtype}.gguf."""

from tubetune.export.gguf import export_gguf_step
from tubetune.logs import run_step
from tubetune.model.base import hub_id_of

base_name = (hub_id_of(snakemake.params.base) or "model").rsplit("/", 1)[-1]
run_step(
    snakemake.log[0],
    lambda: export_gguf_step(
        snakemake.input[0],
        snakemake.output[0],
        snakemake.wildcards.qtype,
        snakemake.params.tokenizer_pre,
        name=f"{base_name} tubetune {snakemake.wildcards.model}",
    ),
)
