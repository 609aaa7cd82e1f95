"""Rule train_run: results/dataset/{train,valid}.jsonl + results/model/base -> results/train/{run}."""

import os

# OpenBLAS reads its thread count when it is loaded (by tubetune.train.runner): one per rule thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(snakemake.threads))

from tubetune.logs import run_step
from tubetune.train.runner import train_run

run_step(
    snakemake.log[0],
    lambda: train_run(
        snakemake.input.train,
        snakemake.input.valid,
        snakemake.input.base,
        adapters=snakemake.output.adapters,
        adapter_config=snakemake.output.adapter_config,
        last=snakemake.output.last,
        metrics=snakemake.output.metrics,
        plot=snakemake.output.plot,
        summary=snakemake.output.summary,
        settings=snakemake.params.settings,
        threads=snakemake.threads,
    ),
)
