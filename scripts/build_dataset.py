"""Rule build_dataset: dedup, filter, quality judge, chat JSONL, split by video, augmentation, statistics."""

from tubetune.dataset.build import DatasetOutputs, LLMPasses, build_dataset
from tubetune.logs import run_step
from tubetune.shards import video_files

run_step(
    snakemake.log[0],
    lambda: build_dataset(
        qa_paths=video_files(snakemake.input.qa, ".jsonl"),
        chunk_status_paths=video_files(snakemake.input.chunks, ".status.json"),
        quarantine_paths=video_files(snakemake.input.questions, ".quarantine.jsonl"),
        dropped_paths=video_files(snakemake.input.qa, ".dropped.jsonl"),
        selected_path=snakemake.input.selected,
        filtered_path=snakemake.input.filtered,
        outputs=DatasetOutputs(
            train=snakemake.output.train,
            valid=snakemake.output.valid,
            test=snakemake.output.test,
            dropped=snakemake.output.dropped,
            skipped=snakemake.output.skipped,
            stats=snakemake.output.stats,
            stats_md=snakemake.output.stats_md,
            lengths=snakemake.output.lengths,
        ),
        dataset_config=snakemake.params.dataset,
        review_dir=snakemake.params.review_dir,
        passes=LLMPasses(
            llm_config={**snakemake.config["llm"], "concurrency": max(1, snakemake.resources.llm_requests)},
            quality_config=snakemake.config["quality"],
            augment_config=snakemake.config["augment"],
            chunk_paths=video_files(snakemake.input.chunks, ".jsonl"),
            quality_usage=snakemake.output.quality_usage,
            augment_usage=snakemake.output.augment_usage,
        ),
    ),
)
