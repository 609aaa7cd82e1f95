# Step 7: dedup, filter, the quality judge (optional LLM pass), chat JSONL, split by video, augmentation of
# the train split (optional LLM pass), statistics.

# QUALITY_ON, AUGMENT_ON: rules/common.smk


rule build_dataset:
    input:
        # the shard folders: Q&A pairs and dropped questions, quarantined questions, chunk statuses (and
        # the chunk texts, which the quality judge reads)
        qa=per_shard(f"{R}/qa/{{shard}}"),
        questions=per_shard(f"{R}/questions/{{shard}}"),
        chunks=per_shard(f"{R}/chunks/{{shard}}"),
        selected=f"{R}/videos/selected.json",
        filtered=f"{R}/videos/filtered.tsv",
        # the optional LLM passes' prompts, inputs only while their pass is on
        quality_prompt=config["quality"]["prompt"] if QUALITY_ON else [],
        augment_prompt=config["augment"]["prompt"] if AUGMENT_ON else [],
    output:
        train=f"{R}/dataset/train.jsonl",
        valid=f"{R}/dataset/valid.jsonl",
        test=f"{R}/dataset/test.jsonl",
        dropped=f"{R}/dataset/dropped.jsonl",
        skipped=f"{R}/dataset/skipped_videos.tsv",
        stats=f"{R}/dataset/stats.json",
        stats_md=f"{R}/dataset/stats.md",
        lengths=f"{R}/dataset/lengths.png",
        # the passes' usage records (a zero record while a pass is off; the ledger reads a pass's record
        # only while it is on, see ledger_records)
        quality_usage=f"{R}/llm/usage/quality.json",
        augment_usage=f"{R}/llm/usage/augment.json",
    params:
        dataset=config["dataset"],
        # what the passes send (a rerun trigger): the llm settings while a pass is on, and each section
        # without its prompt path (the prompt file is an input while its pass is on)
        llm=llm_params() if QUALITY_ON or AUGMENT_ON else {},
        quality={key: value for key, value in config["quality"].items() if key != "prompt"},
        augment={key: value for key, value in config["augment"].items() if key != "prompt"},
        review_dir=f"{R}/review",  # named in the error when no Q&A pair survives
        code=code_version("scripts/build_dataset.py"),
    log:
        f"{LOGS}/build_dataset.log",
    threads: 1
    resources:
        **job_resources("llm"),
        # requests in flight: none with both passes off; batch mode 1 (the passes' Message Batches, like
        # batch_questions); online a per-shard LLM job's share
        llm_requests=(1 if llm_batch_mode() else llm_job_requests()) if QUALITY_ON or AUGMENT_ON else 0,
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/build_dataset.py"
