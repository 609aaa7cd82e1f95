"""Rule review_index: the index page of the review."""

from tubetune.generate.review import review_index
from tubetune.logs import run_step
from tubetune.shards import video_files

run_step(
    snakemake.log[0],
    lambda: review_index(video_files(snakemake.input.pages, ".md"), snakemake.output.index_page),
)
