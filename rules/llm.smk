# The LLM passes as a whole: Message Batches (llm.mode: batch), the cost estimate before a run and the
# ledger of what the calls cost after it.


# llm.mode batch: every cache miss of pass 1 (all videos) goes out as Message Batches; the per-shard
# questions jobs then read the replies from the cache.
rule batch_questions:
    input:
        chunks=per_shard(f"{R}/chunks/{{shard}}"),
        prompt=prompt_file("questions"),
    output:
        report=f"{R}/llm/batch/questions.json",
    params:
        llm=llm_params(),
        questions=question_settings(),
    log:
        f"{LOGS}/batch_questions.log",
    threads: 1
    resources:
        **job_resources("llm_batch"),
        llm_requests=1,
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/batch_questions.py"


# llm.mode batch: pass 2 for all videos, once their questions are validated.
rule batch_answers:
    input:
        questions=per_shard(f"{R}/questions/{{shard}}"),
        chunks=per_shard(f"{R}/chunks/{{shard}}"),
        prompt=prompt_file("answers"),
    output:
        report=f"{R}/llm/batch/answers.json",
    params:
        llm=llm_params(),
    log:
        f"{LOGS}/batch_answers.log",
    threads: 1
    resources:
        **job_resources("llm_batch"),
        llm_requests=1,
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/batch_answers.py"


# What the LLM calls behind the current results cost: every LLM job's usage record, per pass and mode.
rule llm_ledger:
    input:
        records=ledger_records(),
    output:
        json=f"{R}/llm/ledger.json",
        md=f"{R}/llm/ledger.md",
    params:
        prices=config["llm"]["prices"],
    log:
        f"{LOGS}/llm_ledger.log",
    threads: 1
    resources:
        **job_resources("light"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/llm_ledger.py"


# Before a run: every request the next run would send, cache hits vs misses, tokens and dollars
# (online vs batch). No API key, no network. Reruns when the cache, a prompt or a setting changes.
# The passes after the answers (quality judge, augmentation, the evaluation's judge) are estimated
# while they are on: their prompt files are inputs and their sections params only then, so enabling
# a pass reruns the estimate.
DOWNSTREAM_ON = QUALITY_ON or AUGMENT_ON or JUDGE_ON


rule estimate:
    input:
        chunks=per_shard(f"{R}/chunks/{{shard}}"),
        questions_prompt=prompt_file("questions"),
        answers_prompt=prompt_file("answers"),
        selected=f"{R}/videos/selected.json" if DOWNSTREAM_ON else [],  # the channel in the system prompt
        quality_prompt=config["quality"]["prompt"] if QUALITY_ON else [],
        augment_prompt=config["augment"]["prompt"] if AUGMENT_ON else [],
        judge_prompt=config["judge"]["prompt"] if JUDGE_ON else [],
    output:
        json=f"{R}/llm/estimate.json",
        md=f"{R}/llm/estimate.md",
    params:
        llm=config["llm"],
        questions=question_settings(),
        cache=cache_fingerprint(),
        # what the passes after the answers send, each section (without its prompt path) while it is on
        dataset=config["dataset"] if DOWNSTREAM_ON else {},
        quality={k: v for k, v in config["quality"].items() if k != "prompt"} if QUALITY_ON else {},
        augment={k: v for k, v in config["augment"].items() if k != "prompt"} if AUGMENT_ON else {},
        judge=judge_settings() if JUDGE_ON else {},
        evaluate={"max_new_tokens": config["evaluate"]["max_new_tokens"]} if JUDGE_ON else {},
    log:
        f"{LOGS}/estimate.log",
    threads: 1
    resources:
        **job_resources("light"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/estimate.py"
