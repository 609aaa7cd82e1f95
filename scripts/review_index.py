"""Rule review_index: the index page of the review."""

from tubetune.generate.review import review_index
from tubetune.logs import run_step

run_step(snakemake.log[0], lambda: review_index(list(snakemake.input.pages), snakemake.output.index_page))
