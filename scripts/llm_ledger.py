"""Rule llm_ledger: what the LLM calls behind the current results cost, per pass and mode."""

from tubetune.llm.ledger import llm_ledger
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: llm_ledger(
        record_paths=list(snakemake.input.records),
        prices=snakemake.params.prices,
        ledger_json=snakemake.output.json,
        ledger_md=snakemake.output.md,
    ),
)
