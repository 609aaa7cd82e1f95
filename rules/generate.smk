# Steps 4-6 for one shard of videos: extract questions (LLM) and validate them; answer them grounded in
# their chunk (LLM) and write a Markdown page per video for review. Chunking is in rule transcripts.
# As in rule transcripts, the listing is an (ancient) input because the params come from the checkpoint:
# a job that Snakemake starts in a fresh process (a cluster job) re-evaluates them and refuses a param
# that depends on a checkpoint not among the rule's inputs.


rule questions:
    input:
        chunks=f"{R}/chunks/{{shard}}",
        prompt=prompt_file("questions"),
        batch=batch_report("questions"),
        listing=ancient(f"{R}/videos/selected.json"),
    output:
        raw=directory(f"{R}/questions/raw/{{shard}}"),
        questions=directory(f"{R}/questions/{{shard}}"),
        usage=f"{R}/llm/usage/questions/{{shard}}.json",
    params:
        videos=shard_video_ids,
        llm=llm_params(),
        questions=question_settings(),
    log:
        f"{LOGS}/questions/{{shard}}.log",
    threads: 1
    resources:
        **job_resources("llm"),
        llm_requests=llm_job_requests(),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/questions.py"


rule answers:
    input:
        transcripts=f"{R}/transcripts/{{shard}}",
        chunks=f"{R}/chunks/{{shard}}",
        questions=f"{R}/questions/{{shard}}",
        prompt=prompt_file("answers"),
        batch=batch_report("answers"),
        listing=ancient(f"{R}/videos/selected.json"),
    output:
        qa=directory(f"{R}/qa/{{shard}}"),
        review=directory(f"{R}/review/{{shard}}"),
        usage=f"{R}/llm/usage/answers/{{shard}}.json",
    params:
        videos=shard_video_ids,
        llm=llm_params(),
    log:
        f"{LOGS}/answers/{{shard}}.log",
    threads: 1
    resources:
        **job_resources("llm"),
        llm_requests=llm_job_requests(),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/answers.py"


rule review_index:
    input:
        pages=per_shard(f"{R}/review/{{shard}}"),
    output:
        index_page=f"{R}/review/index.md",
    log:
        f"{LOGS}/review_index.log",
    threads: 1
    resources:
        **job_resources("light"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/review_index.py"
