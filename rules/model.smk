# Base model: the bundled SmolLM2 GGUF, a local GGUF / model dir, or a Hugging Face id, turned into an
# MLX / transformers model dir (config.json, model.safetensors, tokenizer, chat template).

rule base_model:
    input:
        base_model_input,
    output:
        model=directory(f"{R}/model/base"),
        check=f"{R}/model/base_check.json",
    params:
        source=BASE_SOURCE.describe(),
        settings=dict(config["model"]),
        code=code_version("scripts/base_model.py"),
    log:
        f"{LOGS}/base_model.log",
    benchmark:
        f"{BENCH}/base_model.tsv"
    threads: ALL_CORES
    resources:
        **job_resources("model"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/base_model.py"
