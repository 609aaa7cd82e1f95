"""A training worker (rank 1.. of a data-parallel run, see :mod:`tubetune.train.parallel`).

    python -m tubetune.train.worker <spec.json>

Started by rank 0 with ``MLX_RANK`` and ``MLX_HOSTFILE`` set; repeats rank 0's run on its part of every
batch and writes its own outputs under the spec's scratch directory, which rank 0 removes.
"""

from __future__ import annotations

import sys

from tubetune.logs import run_step
from tubetune.settings import settings_from
from tubetune.train.parallel import WorkerSpec
from tubetune.train.reproduce import run_layout
from tubetune.train.runner import run_training
from tubetune.train.settings import TrainSettings


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tubetune.train.worker <spec.json>", file=sys.stderr)
        return 2
    spec = WorkerSpec.read(argv[0])
    run_step(None, lambda: run_training(  # the log goes to stderr, which rank 0 keeps
        spec.train, spec.valid, spec.base, run_layout(spec.outputs),
        settings_from(TrainSettings, spec.settings, "train"), blas_threads=spec.blas_threads, worker=spec,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
