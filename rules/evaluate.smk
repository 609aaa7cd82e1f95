# Step 12: evaluate base vs tuned on the test split (greedy answers through llama.cpp on the GGUF
# exports, masked test loss with MLX) and write the metrics and a self-contained HTML report.


rule evaluate:
    input:
        test=f"{R}/dataset/test.jsonl",
        stats=f"{R}/dataset/stats.json",
        base_gguf=eval_gguf("base"),
        tuned_gguf=eval_gguf("tuned"),
        base_model=f"{R}/model/base",
        tuned_model=f"{R}/fused",
        loss_png=winner_file("loss_png"),
        summary=winner_file("summary"),
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
        answers=f"{R}/eval/answers.jsonl",
    params:
        settings=dict(config["evaluate"]),
        run=winner_param,
        code=code_version("scripts/evaluate.py"),
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCH}/evaluate.tsv"
    threads: ALL_CORES
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/evaluate.py"
