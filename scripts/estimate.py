"""Rule estimate: every request the next run would send, cache hits vs misses, tokens and dollars."""

from tubetune.llm.estimate import estimate
from tubetune.llm.estimate_downstream import downstream_config
from tubetune.logs import run_step
from tubetune.shards import video_files

downstream = downstream_config(
    snakemake.input.get("selected"),
    snakemake.params.dataset,
    {
        name: (snakemake.params.get(name), snakemake.input.get(f"{name}_prompt"))
        for name in ("quality", "augment", "judge")
    },
    snakemake.params.evaluate,
)

run_step(
    snakemake.log[0],
    lambda: estimate(
        chunk_paths=video_files(snakemake.input.chunks, ".jsonl"),
        questions_prompt=snakemake.input.questions_prompt,
        answers_prompt=snakemake.input.answers_prompt,
        llm_config=snakemake.params.llm,
        question_config=snakemake.params.questions,
        estimate_json=snakemake.output.json,
        estimate_md=snakemake.output.md,
        downstream=downstream,
    ),
)
