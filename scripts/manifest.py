"""Rule manifest: one training run + its inputs -> results/train/{run}/manifest.json and config.yaml."""

from tubetune.logs import run_step
from tubetune.train.manifest import manifest

run_step(
    snakemake.log[0],
    lambda: manifest(
        summary=snakemake.input.summary,
        metrics=snakemake.input.metrics,
        adapters=snakemake.input.adapters,
        adapter_config=snakemake.input.adapter_config,
        last=snakemake.input.last,
        train=snakemake.input.train,
        valid=snakemake.input.valid,
        test=snakemake.input.test,
        stats=snakemake.input.stats,
        base=snakemake.input.base,
        manifest_json=snakemake.output.manifest,
        config_yaml=snakemake.output.config,
        run=snakemake.params.run,
        train_settings=snakemake.params.settings,
        config=snakemake.params.config,
        workflow_dir=snakemake.params.workflow_dir,
    ),
)
