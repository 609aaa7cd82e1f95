"""Rule train: results/dataset/{train,valid}.jsonl + results/model/base -> results/train (best adapter)."""

import os

# OpenBLAS reads its thread count when it is loaded (by tubetune.train.runner): one per rule thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(snakemake.threads))

from tubetune.logs import run_step
from tubetune.train.runner import train_from_config

run_step(
    snakemake.log[0],
    lambda: train_from_config(
        snakemake.input.train,
        snakemake.input.valid,
        snakemake.input.base,
        os.path.dirname(snakemake.output.metrics),
        dict(snakemake.params.settings),
        threads=snakemake.threads,
    ),
)
