"""Checkpoint compare: every run's summary, metrics and test loss -> results/sweep (ranking, PNG, winner)."""

from pathlib import Path

from tubetune.logs import run_step
from tubetune.train.compare import CompareOutputs, compare_step

outputs = CompareOutputs(
    ranking_md=Path(snakemake.output.ranking),
    ranking_json=Path(snakemake.output.ranking_json),
    plot=Path(snakemake.output.plot),
    winner=Path(snakemake.output.winner),
)
run_step(
    snakemake.log[0],
    lambda: compare_step(
        list(snakemake.params.runs),
        list(snakemake.input.summaries),
        list(snakemake.input.metrics),
        list(snakemake.input.test_losses),
        outputs,
    ),
)
