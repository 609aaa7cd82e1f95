# tubetune: a YouTube channel into a small fine-tuned language model, with evaluation.
#   snakemake --cores 1 estimate  what the LLM passes would cost (cache hits vs misses), no API call
#   snakemake --cores 1 dataset   channel -> reviewed Q&A -> train/valid/test chat JSONL
#   snakemake --cores 1 train     ... -> one LoRA run per sweep point (results/train/<run>/, the best
#                                     adapter of each by val loss) and their ranking (results/sweep/)
#   snakemake --cores 1 all       ... -> the winning run fused, HF + GGUF exports, evaluation report

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/source.smk"
include: "rules/generate.smk"
include: "rules/llm.smk"
include: "rules/dataset.smk"
include: "rules/model.smk"
include: "rules/train.smk"
include: "rules/manifest.smk"
include: "rules/export.smk"
include: "rules/evaluate.smk"


# Run by the main Snakemake process also on a cluster: the targets and the cheap aggregations (an index
# page, the cost estimate and ledger, the sweep ranking, the manifests, the Modelfile; the evaluate rule
# says localrule itself).
localrules:
    all,
    dataset,
    train,
    llm_ledger,
    estimate,
    review_index,
    compare,
    manifest,
    modelfile,


rule all:
    input:
        all_outputs(),
    default_target: True


rule dataset:
    input:
        dataset_outputs(),


rule train:
    input:
        train_outputs(),
