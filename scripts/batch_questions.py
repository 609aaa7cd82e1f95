"""Rule batch_questions (llm.mode: batch): every video's extraction requests as Message Batches."""

from tubetune.generate.questions import batch_questions
from tubetune.logs import run_step
from tubetune.shards import video_files

run_step(
    snakemake.log[0],
    lambda: batch_questions(
        chunk_paths=video_files(snakemake.input.chunks, ".jsonl"),
        prompt_path=snakemake.input.prompt,
        report_path=snakemake.output.report,
        llm_config=snakemake.config["llm"],
        question_config=snakemake.params.questions,
    ),
)
