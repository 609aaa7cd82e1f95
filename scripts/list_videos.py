"""Checkpoint list_videos: the channel's videos after the filters (see tubetune.source.listing)."""

from tubetune.logs import run_step
from tubetune.source import list_videos

run_step(
    snakemake.log[0],
    lambda: list_videos(snakemake.params.source, snakemake.output.selected, snakemake.output.filtered),
)
