"""Rule fuse: results/model/base + the best adapter -> results/fused (a plain model dir)."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", str(snakemake.threads))

from tubetune.logs import run_step
from tubetune.train.fuse import fuse

run_step(
    snakemake.log[0],
    lambda: fuse(
        snakemake.input.base,
        adapters=snakemake.input.adapters,
        adapter_config=snakemake.input.adapter_config,
        fused=snakemake.output.fused,
        run=snakemake.params.run,
    ),
)
