# Step 12: evaluate base vs tuned on the test split. answer_test (heavy): greedy answers through
# llama.cpp on the GGUF exports and the masked test loss with MLX, every answer scored. evaluate (cheap,
# local): the paired bootstrap interval of every delta, the judge's verdict and export parity, into
# metrics.json and a self-contained HTML report. A report or interval change reruns evaluate alone.


rule answer_test:
    input:
        test=f"{R}/dataset/test.jsonl",
        base_gguf=eval_gguf("base"),
        tuned_gguf=eval_gguf("tuned"),
        base_model=f"{R}/model/base",
        tuned_model=f"{R}/fused",
        winner=winner_chosen(),  # waits for the comparison: a new point that does not win reruns nothing
    output:
        answers=f"{R}/eval/answers.jsonl",
        scores=f"{R}/eval/scores.json",
    params:
        settings=answer_test_settings(),
        code=code_version("scripts/answer_test.py"),
    log:
        f"{LOGS}/answer_test.log",
    benchmark:
        f"{BENCH}/answer_test.tsv"
    threads: ALL_CORES
    resources:
        **job_resources("evaluate"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/answer_test.py"


rule evaluate:
    input:
        scores=f"{R}/eval/scores.json",
        answers=f"{R}/eval/answers.jsonl",
        judge=f"{R}/eval/judge.json",
        judge_rows=f"{R}/eval/judge.jsonl",
        parity=f"{R}/eval/parity.json",
        loss_png=winner_file("loss_png"),
        summary=winner_file("summary"),
        stats=f"{R}/dataset/stats.json",
        ledger=ancient(f"{R}/llm/ledger.json"),  # a price change reruns the ledger alone
    output:
        metrics=report(
            f"{R}/eval/metrics.json",
            caption="../report/evaluate_metrics.rst",
            category="Evaluation",
        ),
        report=report(
            f"{R}/eval/report.html",
            caption="../report/evaluate_report.rst",
            category="Evaluation",
        ),
    params:
        settings=report_settings(),
        run=winner_param,
        code=code_version("scripts/evaluate.py"),
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    localrule: True
    threads: 1
    resources:
        **job_resources("light"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/evaluate.py"


# Export parity: greedy tokens of the fused model (MLX) vs the f16 GGUF in llama.cpp and the HF export in
# transformers, on the first evaluate.parity_prompts test prompts. A comparison that cannot run is
# recorded as skipped with its reason; the job still succeeds.
rule parity:
    input:
        test=f"{R}/dataset/test.jsonl",
        fused=f"{R}/fused",
        gguf=PARITY_GGUF,
        hf=f"{R}/export/hf",
        winner=winner_chosen(),  # a sweep point that does not win leaves parity alone
    output:
        parity=f"{R}/eval/parity.json",
    params:
        settings=parity_settings(),
        code=code_version("scripts/parity.py"),
    log:
        f"{LOGS}/parity.log",
    benchmark:
        f"{BENCH}/parity.tsv"
    threads: ALL_CORES
    resources:
        **job_resources("evaluate"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/parity.py"


# The judge: an LLM compares the base and the tuned answer of every test question in both orders
# (llm section's backend, cache and mode; judge.model). Without cached replies and without
# ANTHROPIC_API_KEY it writes status not_run with the reason and succeeds. Its cost is in judge.json and
# its usage record, not in the LLM ledger (the ledger belongs to the dataset target; the judge needs a
# trained model). code: the verdicts and intervals are computed here, so a code edit reruns it (the
# replies come from the cache).
rule judge:
    input:
        answers=f"{R}/eval/answers.jsonl",
        chunks=per_shard(f"{R}/chunks/{{shard}}"),
        prompt=config["judge"]["prompt"],
        winner=winner_chosen(),  # a sweep point that does not win leaves the judge alone
    output:
        rows=f"{R}/eval/judge.jsonl",
        summary=f"{R}/eval/judge.json",
        usage=f"{R}/llm/usage/judge.json",
    params:
        llm=judge_llm_params(),
        judge=judge_settings(),
        bootstrap=judge_bootstrap_settings(),
        # a judge that ended "not_run" for want of an API key reruns once the key is set
        can_call=judge_can_call(),
        code=code_version("scripts/judge.py"),
    log:
        f"{LOGS}/judge.log",
    benchmark:
        f"{BENCH}/judge.tsv"
    threads: 1
    resources:
        **job_resources("llm"),
        llm_requests=judge_llm_requests(),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/judge.py"
