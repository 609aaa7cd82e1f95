# Steps 10-11: Hugging Face export (float16 model dir + model card), GGUF exports of the base and the
# tuned model for llama.cpp, and an Ollama Modelfile.


wildcard_constraints:
    model=r"base|tuned",
    qtype=r"f16|q8_0|q4_0",


rule export_hf:
    input:
        model=f"{R}/fused",
        stats=f"{R}/dataset/stats.json",
        summary=winner_file("summary"),
    output:
        hf=directory(f"{R}/export/hf"),
    params:
        dtype=config["export"]["hf_dtype"],
        base=config["model"]["base"],
        channel=config["source"]["channel"],
        run=winner_param,
        code=code_version("scripts/export_hf.py"),
    log:
        f"{LOGS}/export_hf.log",
    benchmark:
        f"{BENCH}/export_hf.tsv"
    threads: 1
    resources:
        **job_resources("model"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/export_hf.py"


rule export_gguf:
    input:
        model=export_model_dir,
        winner=export_winner,
    output:
        gguf=f"{R}/export/gguf/{{model}}-{{qtype}}.gguf",
    params:
        tokenizer_pre=config["export"]["gguf_tokenizer_pre"],
        base=config["model"]["base"],
        code=code_version("scripts/export_gguf.py"),
    log:
        f"{LOGS}/export_gguf/{{model}}-{{qtype}}.log",
    benchmark:
        f"{BENCH}/export_gguf/{{model}}-{{qtype}}.tsv"
    threads: 1
    resources:
        **job_resources("model"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/export_gguf.py"


rule modelfile:
    input:
        gguf=tuned_modelfile_gguf,
        stats=f"{R}/dataset/stats.json",
        winner=winner_chosen(),
    output:
        modelfile=f"{R}/export/gguf/Modelfile",
    params:
        system=config["export"]["ollama_system"],
        parameters=dict(config["export"]["ollama_parameters"]),
        code=code_version("scripts/modelfile.py"),
    log:
        f"{LOGS}/modelfile.log",
    threads: 1
    resources:
        **job_resources("light"),
    conda:
        "../envs/tubetune.yaml"
    script:
        "../scripts/modelfile.py"
