# Run manifest: what one training run was made of (resolved config and hashes, git commit, package
# versions, platform and BLAS, seeds, SHA-256 of the dataset, base model and adapter files, times,
# val losses), and a config.yaml that reruns it. Rerun and compare: python -m tubetune.train.reproduce.

# The train target asks for every run's manifest (train_outputs in rules/common.smk).

rule manifest:
    input:
        summary=f"{R}/train/{{run}}/summary.json",
        metrics=f"{R}/train/{{run}}/metrics.jsonl",
        adapters=f"{R}/train/{{run}}/adapters/adapters.safetensors",
        adapter_config=f"{R}/train/{{run}}/adapters/adapter_config.json",
        last=f"{R}/train/{{run}}/adapters/last.safetensors",
        train=f"{R}/dataset/train.jsonl",
        valid=f"{R}/dataset/valid.jsonl",
        test=f"{R}/dataset/test.jsonl",
        stats=f"{R}/dataset/stats.json",
        base=f"{R}/model/base",
    output:
        manifest=f"{R}/train/{{run}}/manifest.json",
        config=f"{R}/train/{{run}}/config.yaml",
    params:
        run="{run}",
        settings=run_train_settings,
        config=manifest_config,
        workflow_dir=WORKFLOW_DIR,
    log:
        f"{LOGS}/manifest/{{run}}.log",
    threads: 1
    resources:
        **job_resources("light"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/manifest.py"
