# Base model: the bundled SmolLM2 GGUF, a local GGUF / model dir, or a Hugging Face id, turned into an
# MLX / transformers model dir (config.json, model.safetensors, tokenizer, chat template).

from tubetune.model.base import resolve_base as _resolve_base  # noqa: E402

BASE_SOURCE = _resolve_base(config["model"]["base"])


def base_model_input(wildcards):
    """Local sources are inputs (edits to them rerun the rule); a bundled GGUF or hub id is a param."""
    return BASE_SOURCE.input_files()


rule base_model:
    input:
        base_model_input,
    output:
        model=directory(f"{R}/model/base"),
        check=f"{R}/model/base_check.json",
    params:
        source=BASE_SOURCE.describe(),
        settings=dict(config["model"]),
    log:
        f"{LOGS}/base_model.log",
    benchmark:
        f"{BENCH}/base_model.tsv"
    threads: workflow.cores or 2
    script:
        "../scripts/base_model.py"
