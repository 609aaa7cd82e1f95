"""Rule build_dataset: dedup, filter, chat JSONL, split by video, statistics."""

from pathlib import Path

from tubetune.dataset.build import build_dataset
from tubetune.logs import run_step

run_step(
    snakemake.log[0],
    lambda: build_dataset(
        qa_paths=list(snakemake.input.qa),
        chunk_status_paths=list(snakemake.input.chunk_status),
        quarantine_paths=list(snakemake.input.quarantine),
        dropped_paths=list(snakemake.input.dropped),
        selected_path=snakemake.input.selected,
        filtered_path=snakemake.input.filtered,
        out_dir=Path(snakemake.output.stats).parent,
        dataset_config=snakemake.params.dataset,
        ledger_path=snakemake.input.ledger,
    ),
)
