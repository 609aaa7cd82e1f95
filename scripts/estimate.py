"""Rule estimate: every request the next run would send, cache hits vs misses, tokens and dollars."""

from tubetune.llm.estimate import estimate
from tubetune.llm.estimate_downstream import DownstreamConfig
from tubetune.logs import run_step


def section(name: str, prompt: str) -> dict | None:
    """A pass's config section with its prompt file (an input), or None while the pass is off."""
    values = snakemake.params.get(name)
    return {**values, "prompt": snakemake.input[prompt]} if values else None


downstream = DownstreamConfig(
    selected=snakemake.input.get("selected") or None,
    dataset=snakemake.params.dataset,
    quality=section("quality", "quality_prompt"),
    augment=section("augment", "augment_prompt"),
    judge=section("judge", "judge_prompt"),
    max_new_tokens=snakemake.params.evaluate.get("max_new_tokens", 256),
)

run_step(
    snakemake.log[0],
    lambda: estimate(
        chunk_paths=list(snakemake.input.chunks),
        questions_prompt=snakemake.input.questions_prompt,
        answers_prompt=snakemake.input.answers_prompt,
        llm_config=snakemake.params.llm,
        question_config=snakemake.params.questions,
        estimate_json=snakemake.output.json,
        estimate_md=snakemake.output.md,
        downstream=downstream if snakemake.params.dataset else None,
    ),
)
