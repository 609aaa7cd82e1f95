"""Rule transcripts: the transcript and chunks of every video of one shard (see tubetune.source.shard)."""

from pathlib import Path

from tubetune.logs import run_step
from tubetune.source.shard import transcripts_shard

run_step(
    snakemake.log[0],
    lambda: transcripts_shard(
        shard=snakemake.wildcards.shard,
        videos=snakemake.params.videos,
        source=snakemake.params.source,
        transcript_files={Path(path).name.split(".", 1)[0]: path for path in snakemake.input.files},
        chunk_config=snakemake.params.chunk,
        transcripts_dir=snakemake.output.transcripts,
        chunks_dir=snakemake.output.chunks,
        store_dir=snakemake.config["source"]["transcript_store"],
    ),
)
