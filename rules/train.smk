# Steps 8-9: LoRA fine-tune with mlx-lm, one run per sweep point (metrics, best adapter by val loss),
# the test loss of each run, the comparison that picks the winner, and fusing the winner into a model dir.

rule train_run:
    input:
        train=f"{R}/dataset/train.jsonl",
        valid=f"{R}/dataset/valid.jsonl",
        base=f"{R}/model/base",
    output:
        adapters=f"{R}/train/{{run}}/adapters/adapters.safetensors",
        adapter_config=f"{R}/train/{{run}}/adapters/adapter_config.json",
        last=f"{R}/train/{{run}}/adapters/last.safetensors",
        metrics=f"{R}/train/{{run}}/metrics.jsonl",
        plot=report(
            f"{R}/train/{{run}}/loss.png",
            caption="../report/train_loss.rst",
            category="Training",
            subcategory="{run}",
        ),
        summary=f"{R}/train/{{run}}/summary.json",
    params:
        settings=run_train_settings,
        code=code_version("scripts/train.py"),
    log:
        f"{LOGS}/train/{{run}}.log",
    benchmark:
        f"{BENCH}/train/{{run}}.tsv"
    threads: ALL_CORES
    resources:
        **job_resources("train"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/train.py"


rule test_loss:
    input:
        test=f"{R}/dataset/test.jsonl",
        base=f"{R}/model/base",
        adapters=f"{R}/train/{{run}}/adapters/adapters.safetensors",
        adapter_config=f"{R}/train/{{run}}/adapters/adapter_config.json",
    output:
        test_loss=f"{R}/train/{{run}}/test_loss.json",
    params:
        settings=test_loss_settings(),
        code=code_version("scripts/test_loss.py"),
    log:
        f"{LOGS}/test_loss/{{run}}.log",
    threads: ALL_CORES
    resources:
        **job_resources("train"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/test_loss.py"


checkpoint compare:
    input:
        summaries=run_files("summary.json"),
        metrics=run_files("metrics.jsonl"),
        test_losses=run_files("test_loss.json"),
    output:
        ranking=report(f"{R}/sweep/ranking.md", caption="../report/sweep_ranking.rst", category="Training"),
        ranking_json=f"{R}/sweep/ranking.json",
        plot=report(f"{R}/sweep/loss_curves.png", caption="../report/sweep_loss_curves.rst", category="Training"),
        winner=f"{R}/sweep/winner.json",
    params:
        runs=RUN_NAMES,
        code=code_version("scripts/compare.py"),
    log:
        f"{LOGS}/compare.log",
    threads: 1
    resources:
        **job_resources("light"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/compare.py"


rule fuse:
    input:
        base=f"{R}/model/base",
        adapters=winner_file("adapters"),
        adapter_config=winner_file("adapter_config"),
    output:
        fused=directory(f"{R}/fused"),
    params:
        run=winner_param,
        code=code_version("scripts/fuse.py"),
    log:
        f"{LOGS}/fuse.log",
    benchmark:
        f"{BENCH}/fuse.tsv"
    threads: ALL_CORES
    resources:
        **job_resources("model"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/fuse.py"
