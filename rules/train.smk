# Steps 8-9: LoRA fine-tune with mlx-lm (metrics, best adapter by val loss), fuse into a model dir.

rule train:
    input:
        train=f"{R}/dataset/train.jsonl",
        valid=f"{R}/dataset/valid.jsonl",
        base=f"{R}/model/base",
    output:
        adapters=f"{R}/train/adapters/adapters.safetensors",
        adapter_config=f"{R}/train/adapters/adapter_config.json",
        last=f"{R}/train/adapters/last.safetensors",
        metrics=f"{R}/train/metrics.jsonl",
        plot=report(f"{R}/train/loss.png", caption="../report/train_loss.rst", category="Training"),
        summary=f"{R}/train/summary.json",
    params:
        settings=train_settings(),
    log:
        f"{LOGS}/train.log",
    benchmark:
        f"{BENCH}/train.tsv"
    threads: workflow.cores or 2
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/train.py"


rule fuse:
    input:
        base=f"{R}/model/base",
        adapters=f"{R}/train/adapters/adapters.safetensors",
        adapter_config=f"{R}/train/adapters/adapter_config.json",
    output:
        directory(f"{R}/fused"),
    log:
        f"{LOGS}/fuse.log",
    benchmark:
        f"{BENCH}/fuse.tsv"
    threads: workflow.cores or 2
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/fuse.py"
