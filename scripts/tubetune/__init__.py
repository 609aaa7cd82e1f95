"""tubetune: a YouTube channel into a small fine-tuned language model, with evaluation.

The package holds all logic of the workflow; the thin scripts in ``scripts/`` only pass
``snakemake.input/output/params/log`` into the functions here, so everything is importable and
testable without Snakemake.
"""

__version__ = "0.1.0"
