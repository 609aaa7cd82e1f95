"""Rule base_model: model.base -> results/model/base (+ base_check.json, greedy parity with llama.cpp)."""

from tubetune.logs import run_step
from tubetune.model.base import base_model

run_step(
    snakemake.log[0],
    lambda: base_model(snakemake.params.settings, snakemake.output.model, snakemake.output.check),
)
