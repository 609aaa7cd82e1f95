"""Checkpoint compare: every run's summary, metrics and test loss -> results/sweep (ranking, PNG, winner)."""

from tubetune.logs import run_step
from tubetune.train.compare import compare

run_step(
    snakemake.log[0],
    lambda: compare(
        list(snakemake.params.runs),
        list(snakemake.input.summaries),
        list(snakemake.input.metrics),
        list(snakemake.input.test_losses),
        ranking=snakemake.output.ranking,
        ranking_json=snakemake.output.ranking_json,
        plot=snakemake.output.plot,
        winner=snakemake.output.winner,
    ),
)
