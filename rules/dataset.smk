# Step 7: dedup, filter, chat JSONL, split by video, statistics.


rule build_dataset:
    input:
        qa=per_video(f"{R}/qa/{{video}}.jsonl"),
        dropped=per_video(f"{R}/qa/{{video}}.dropped.jsonl"),
        quarantine=per_video(f"{R}/questions/{{video}}.quarantine.jsonl"),
        chunk_status=per_video(f"{R}/chunks/{{video}}.status.json"),
        selected=f"{R}/videos/selected.json",
        filtered=f"{R}/videos/filtered.tsv",
        ledger=ancient(f"{R}/llm/ledger.json"),  # a price change reruns the ledger alone
    output:
        train=f"{R}/dataset/train.jsonl",
        valid=f"{R}/dataset/valid.jsonl",
        test=f"{R}/dataset/test.jsonl",
        dropped=f"{R}/dataset/dropped.jsonl",
        skipped=f"{R}/dataset/skipped_videos.tsv",
        stats=f"{R}/dataset/stats.json",
        stats_md=f"{R}/dataset/stats.md",
        lengths=f"{R}/dataset/lengths.png",
    params:
        dataset=config["dataset"],
        review_dir=f"{R}/review",  # named in the error when no Q&A pair survives
        code=code_version("scripts/build_dataset.py"),
    log:
        f"{LOGS}/build_dataset.log",
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/build_dataset.py"
