# tubetune: a YouTube channel into a small fine-tuned language model, with evaluation.
#   snakemake --cores 1 dataset   channel -> reviewed Q&A -> train/valid/test chat JSONL
#   snakemake --cores 1 train     ... -> best LoRA adapter with metrics (the rule in rules/train.smk)
#   snakemake --cores 1 all       ... -> fused model, HF + GGUF exports, evaluation report

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/source.smk"
include: "rules/generate.smk"
include: "rules/dataset.smk"
include: "rules/model.smk"
include: "rules/train.smk"
include: "rules/export.smk"
include: "rules/evaluate.smk"


localrules:
    all,
    dataset,


rule all:
    input:
        all_outputs(),
    default_target: True


rule dataset:
    input:
        dataset_outputs(),
