"""Rule manifest: one training run + its inputs -> results/train/{run}/manifest.json and config.yaml."""

from tubetune.logs import run_step
from tubetune.train.manifest import write_manifest

run_step(
    snakemake.log[0],
    lambda: write_manifest(
        snakemake.output.manifest,
        snakemake.output.config,
        run=snakemake.params.run,
        summary=snakemake.input.summary,
        metrics=snakemake.input.metrics,
        adapters={
            "adapters": snakemake.input.adapters,
            "adapter_config": snakemake.input.adapter_config,
            "last": snakemake.input.last,
        },
        dataset={
            "train": snakemake.input.train,
            "valid": snakemake.input.valid,
            "test": snakemake.input.test,
            "stats": snakemake.input.stats,
        },
        base_model=snakemake.input.base,
        config=snakemake.params.config,
        train_settings=snakemake.params.settings,
        workflow_dir=snakemake.params.workflow_dir,
    ),
)
