"""Rule modelfile: results/export/gguf/Modelfile for Ollama (FROM the tuned GGUF, template, system)."""

from tubetune.export.modelfile import write_modelfile
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: write_modelfile(
        snakemake.output[0],
        snakemake.input.gguf,
        snakemake.input.stats,
        snakemake.params.system,
        snakemake.params.parameters,
    ),
)
