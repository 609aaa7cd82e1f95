# Steps 8-9: LoRA fine-tune with mlx-lm (metrics, best adapter by val loss), fuse into a model dir.

from tubetune.train.settings import TrainSettings as _TrainSettings  # noqa: E402

# Cross-key checks (iters vs epochs, ...) fail here, before any job starts.
try:
    _TrainSettings.from_config(config["train"])
except ConfigError as _exc:
    raise WorkflowError(str(_exc)) from None


def train_settings():
    """The resolved train settings (profile applied, schema defaults filled): the rule's params."""
    return dict(config["train"])


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
        plot=f"{R}/train/loss.png",
        summary=f"{R}/train/summary.json",
    params:
        settings=train_settings(),
    log:
        f"{LOGS}/train.log",
    benchmark:
        f"{BENCH}/train.tsv"
    threads: workflow.cores or 2
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
    script:
        "../scripts/fuse.py"
