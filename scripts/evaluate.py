"""Rule evaluate: base vs tuned on the test split -> metrics.json, answers.jsonl, report.html."""

from pathlib import Path

from tubetune.evaluate.run import EvalInputs, EvalOutputs, evaluate
from tubetune.logs import run_step

inputs = EvalInputs(
    test=Path(snakemake.input.test),
    stats=Path(snakemake.input.stats),
    base_gguf=Path(snakemake.input.base_gguf),
    tuned_gguf=Path(snakemake.input.tuned_gguf),
    base_model=Path(snakemake.input.base_model),
    tuned_model=Path(snakemake.input.tuned_model),
    loss_png=Path(snakemake.input.loss_png),
    summary=Path(snakemake.input.summary),
    ledger=Path(snakemake.input.ledger),
)
outputs = EvalOutputs(
    metrics=Path(snakemake.output.metrics),
    report=Path(snakemake.output.report),
    answers=Path(snakemake.output.answers),
)
run_step(
    snakemake.log[0],
    lambda: evaluate(
        inputs, outputs, snakemake.params.settings, threads=snakemake.threads, run=snakemake.params.run
    ),
)
