"""Rule test_loss: results/model/base + one run's best adapter -> results/train/{run}/test_loss.json."""

import os

# OpenBLAS reads its thread count when it is loaded: one per rule thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(snakemake.threads))

from tubetune.logs import run_step
from tubetune.train.test_loss import adapter_test_loss

run_step(
    snakemake.log[0],
    lambda: adapter_test_loss(
        snakemake.input.base,
        os.path.dirname(snakemake.input.adapters),
        snakemake.input.test,
        snakemake.output[0],
        batch_size=snakemake.params.settings["loss_batch_size"],
        max_seq_length=snakemake.params.settings["loss_max_seq_length"],
        max_examples=snakemake.params.settings["max_examples"],
        run=snakemake.wildcards.run,
    ),
)
