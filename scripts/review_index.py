"""Rule review_index: the index page of the review."""

from tubetune.generate.review import write_review_index
from tubetune.logs import run_step

run_step(snakemake.log[0], lambda: write_review_index(list(snakemake.input), snakemake.output[0]))
