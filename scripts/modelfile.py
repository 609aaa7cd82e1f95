"""Rule modelfile: results/export/gguf/Modelfile for Ollama (FROM the tuned GGUF, template, system)."""

from tubetune.export.modelfile import modelfile
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: modelfile(
        snakemake.input.gguf,
        snakemake.input.stats,
        snakemake.output.modelfile,
        system=snakemake.params.system,
        parameters=snakemake.params.parameters,
    ),
)
