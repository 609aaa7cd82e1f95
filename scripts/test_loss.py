"""Rule test_loss: results/model/base + one run's best adapter -> results/train/{run}/test_loss.json."""

import os

# OpenBLAS reads its thread count when it is loaded: one per rule thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(snakemake.threads))

from tubetune.logs import run_step
from tubetune.train.test_loss import test_loss

run_step(
    snakemake.log[0],
    lambda: test_loss(
        snakemake.input.test,
        snakemake.input.base,
        adapters=snakemake.input.adapters,
        adapter_config=snakemake.input.adapter_config,
        out=snakemake.output.test_loss,
        run=snakemake.wildcards.run,
        settings=snakemake.params.settings,
    ),
)
