"""Rule batch_answers (llm.mode: batch): every video's answer requests as Message Batches."""

from tubetune.generate.answers import batch_answers
from tubetune.logs import run_step
from tubetune.shards import video_files

run_step(
    snakemake.log[0],
    lambda: batch_answers(
        question_paths=video_files(snakemake.input.questions, ".jsonl"),
        chunk_paths=video_files(snakemake.input.chunks, ".jsonl"),
        prompt_path=snakemake.input.prompt,
        report_path=snakemake.output.report,
        llm_config=snakemake.config["llm"],
    ),
)
