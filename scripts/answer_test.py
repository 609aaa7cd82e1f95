"""Rule answer_test: base and tuned answer the test split -> answers.jsonl, scores.json."""

from pathlib import Path

from tubetune.evaluate.run import AnswerInputs, AnswerOutputs, answer_test
from tubetune.logs import run_step

inputs = AnswerInputs(
    test=Path(snakemake.input.test),
    base_gguf=Path(snakemake.input.base_gguf),
    tuned_gguf=Path(snakemake.input.tuned_gguf),
    base_model=Path(snakemake.input.base_model),
    tuned_model=Path(snakemake.input.tuned_model),
)
outputs = AnswerOutputs(answers=Path(snakemake.output.answers), scores=Path(snakemake.output.scores))
run_step(
    snakemake.log[0],
    lambda: answer_test(inputs, outputs, snakemake.params.settings, threads=snakemake.threads),
)
