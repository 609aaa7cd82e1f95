"""Rule llm_ledger: what the LLM calls behind the current results cost, per pass and mode."""

from tubetune.llm.ledger import ledger_step
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: ledger_step(
        record_paths=list(snakemake.input),
        llm_config=snakemake.config["llm"],
        out_json=snakemake.output.json,
        out_md=snakemake.output.md,
    ),
)
