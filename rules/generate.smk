# Steps 3-6: chunk each transcript, extract questions (LLM), validate them, answer them grounded in
# their chunk (LLM), and write a Markdown page per video for review.


rule chunk:
    input:
        transcript=f"{R}/transcripts/{{video}}.json",
    output:
        chunks=f"{R}/chunks/{{video}}.jsonl",
        status=f"{R}/chunks/{{video}}.status.json",
    params:
        chunk=config["chunk"],
    log:
        f"{LOGS}/chunk/{{video}}.log",
    threads: 1
    resources:
        **job_resources("light"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/chunk.py"


rule extract_questions:
    input:
        chunks=f"{R}/chunks/{{video}}.jsonl",
        prompt=prompt_file("questions"),
        batch=batch_report("questions"),
    output:
        questions=f"{R}/questions/raw/{{video}}.jsonl",
        usage=f"{R}/llm/usage/questions/{{video}}.json",
    params:
        llm=llm_params(),
        questions=question_settings(),
    log:
        f"{LOGS}/extract_questions/{{video}}.log",
    threads: 1
    resources:
        **job_resources("llm"),
        llm_requests=llm_job_requests(),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/extract_questions.py"


rule validate_questions:
    input:
        raw=f"{R}/questions/raw/{{video}}.jsonl",
        chunks=f"{R}/chunks/{{video}}.jsonl",
    output:
        questions=f"{R}/questions/{{video}}.jsonl",
        quarantine=f"{R}/questions/{{video}}.quarantine.jsonl",
    params:
        questions=question_settings(),
    log:
        f"{LOGS}/validate_questions/{{video}}.log",
    threads: 1
    resources:
        **job_resources("light"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/validate_questions.py"


rule answer_questions:
    input:
        questions=f"{R}/questions/{{video}}.jsonl",
        chunks=f"{R}/chunks/{{video}}.jsonl",
        prompt=prompt_file("answers"),
        batch=batch_report("answers"),
    output:
        qa=f"{R}/qa/{{video}}.jsonl",
        dropped=f"{R}/qa/{{video}}.dropped.jsonl",
        usage=f"{R}/llm/usage/answers/{{video}}.json",
    params:
        llm=llm_params(),
    log:
        f"{LOGS}/answer_questions/{{video}}.log",
    threads: 1
    resources:
        **job_resources("llm"),
        llm_requests=llm_job_requests(),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/answer_questions.py"


rule review:
    input:
        transcript=f"{R}/transcripts/{{video}}.json",
        qa=f"{R}/qa/{{video}}.jsonl",
        dropped=f"{R}/qa/{{video}}.dropped.jsonl",
        quarantine=f"{R}/questions/{{video}}.quarantine.jsonl",
    output:
        page=f"{R}/review/{{video}}.md",
    log:
        f"{LOGS}/review/{{video}}.log",
    threads: 1
    resources:
        **job_resources("light"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/review.py"


rule review_index:
    input:
        pages=per_video(f"{R}/review/{{video}}.md"),
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
