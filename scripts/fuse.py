"""Rule fuse: results/model/base + the best adapter -> results/fused (a plain model dir)."""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", str(snakemake.threads))

from tubetune.logs import run_step
from tubetune.train.fuse import fuse_adapters

run_step(
    snakemake.log[0],
    lambda: fuse_adapters(
        snakemake.input.base,
        os.path.dirname(snakemake.input.adapters),
        snakemake.output[0],
        run=snakemake.params.run,
    ),
)
