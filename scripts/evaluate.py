"""Rule evaluate: scores, judge and parity -> metrics.json (with intervals) and report.html."""

from pathlib import Path

from tubetune.evaluate.summary import EvaluateInputs, EvaluateOutputs, evaluate
from tubetune.logs import run_step

inputs = EvaluateInputs(
    scores=Path(snakemake.input.scores),
    answers=Path(snakemake.input.answers),
    judge=Path(snakemake.input.judge),
    judge_rows=Path(snakemake.input.judge_rows),
    parity=Path(snakemake.input.parity),
    loss_png=Path(snakemake.input.loss_png),
    summary=Path(snakemake.input.summary),
    stats=Path(snakemake.input.stats),
    ledger=Path(snakemake.input.ledger),
)
outputs = EvaluateOutputs(metrics=Path(snakemake.output.metrics), report=Path(snakemake.output.report))
run_step(
    snakemake.log[0],
    lambda: evaluate(inputs, outputs, snakemake.params.settings, run=snakemake.params.run),
)
