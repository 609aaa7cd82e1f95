"""The estimate of the LLM passes after the answers: the quality judge and the augmentation of
``build_dataset`` and the evaluation's judge (part of :mod:`tubetune.llm.estimate`).

Their requests are built by each pass's own functions (:func:`~tubetune.dataset.quality.rating_plan`,
:func:`~tubetune.dataset.augment.paraphrase_plan`, :func:`~tubetune.evaluate.judge.judge_plan`), so
prompts and cache keys are the ones the run sends. What they carry depends on replies of earlier
passes:

- When every chunk's Q&A pairs are known from cached replies (extraction and answers), the dataset
  step is replayed offline: its filters and dedup, the quality judge's requests looked up in the
  cache (a hit costs nothing) and, once every rating is cached too, the split by video and the
  paraphrase requests of the train chunks, looked up in the cache.
- Otherwise a pass is *projected*: one request per chunk with that chunk's pairs (placeholder
  questions and answers of typical length where the replies are missing); augmentation on the share
  ``dataset.split.train`` of the chunks with pairs.
- The judge is always projected: the base and tuned answers exist only after training. Its test
  questions are the real test split when the dataset can be replayed, else ``dataset.split.test``
  of the expected pairs; the answers are placeholders of the lengths measured on the sample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tubetune.dataset.augment import PLACEHOLDERS as AUGMENT_PLACEHOLDERS
from tubetune.dataset.augment import AugmentSettings, check_paraphrases, paraphrase_plan, paraphrase_request
from tubetune.dataset.build import DatasetSettings, Drops, chat_example, filter_and_dedup, split_videos
from tubetune.dataset.quality import PLACEHOLDERS as QUALITY_PLACEHOLDERS
from tubetune.dataset.quality import QualitySettings, check_ratings, rating_plan, rating_request, verdict
from tubetune.errors import ConfigError
from tubetune.evaluate.judge import PLACEHOLDERS as JUDGE_PLACEHOLDERS
from tubetune.evaluate.judge import JudgeSettings, judge_llm_settings, judge_plan
from tubetune.generate.chunk import Chunk
from tubetune.generate.prompts import PromptTemplate, load_prompt
from tubetune.jsonio import read_json
from tubetune.llm.client import LLMClient
from tubetune.llm.cost import CHARS_PER_TOKEN
from tubetune.llm.estimate_tally import PassTally, project_request, project_share, tally_request
from tubetune.llm.request import LLMRequest
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

# Expected output tokens per unit of a pass (its name) for a model (the LLM settings of the pass).
PerUnit = Callable[[str, LLMSettings], float]
# A projected Q&A pair's answer: the 134 answerable answers in data/sample/llm_cache average 415
# characters.
PLACEHOLDER_ANSWER_CHARS = 415
# The judge's projected answers: the mean answer lengths measured on the sample's test split (README,
# "Measured on the sample": base 940, tuned 337 characters), each capped at evaluate.max_new_tokens
# tokens of CHARS_PER_TOKEN characters.
JUDGED_ANSWER_CHARS = {"base": 940, "tuned": 337}
FILLER = "Keep the heat steady and check the texture often, because the timing depends on the batch. "


def filler(chars: int) -> str:
    """Placeholder text of exactly ``chars`` characters (at least one)."""
    chars = max(1, chars)
    return (FILLER * (chars // len(FILLER) + 1))[:chars]


@dataclass(frozen=True)
class ChunkPairs:
    """The Q&A rows the answers pass gives one chunk (as in results/qa), and whether they are known:
    ``exact`` when the chunk's replies are cached (its rows may then be none), else rows with
    placeholder questions or answers where a reply is missing."""

    chunk: Chunk
    rows: list[dict[str, Any]]
    exact: bool


@dataclass(frozen=True)
class DownstreamConfig:
    """The config of the passes after the answers, as rule ``estimate`` gets them: each pass's section
    (with its prompt path) or None while it is off, the dataset section, selected.json (the channel's
    name in the system prompt) and evaluate.max_new_tokens."""

    selected: str | Path | None
    dataset: Mapping[str, Any]
    quality: Mapping[str, Any] | None = None
    augment: Mapping[str, Any] | None = None
    judge: Mapping[str, Any] | None = None
    max_new_tokens: int | None = None  # evaluate.max_new_tokens, given while the judge is on


def downstream_config(
    selected: str | Path | None,
    dataset: Mapping[str, Any],
    sections: Mapping[str, tuple[Mapping[str, Any], str | Path | None]],
    evaluate: Mapping[str, Any],
) -> DownstreamConfig | None:
    """The rule's inputs and params as a :class:`DownstreamConfig`: ``sections`` maps quality / augment
    / judge to (its params without the prompt, its prompt file), empty while the pass is off; None
    when every pass is off (``dataset`` is then empty)."""
    if not dataset:
        return None

    def section(name: str) -> dict[str, Any] | None:
        values, prompt = sections[name]
        return {**values, "prompt": str(prompt)} if values else None

    return DownstreamConfig(
        selected=selected or None, dataset=dataset, quality=section("quality"), augment=section("augment"),
        judge=section("judge"), max_new_tokens=evaluate.get("max_new_tokens"),
    )


@dataclass
class PassEstimate:
    """One pass's counted requests, its prompt and LLM settings, and the assumption when projected."""

    tally: PassTally
    prompt: PromptTemplate
    llm: LLMSettings
    note: str | None = None


@dataclass
class Replay:
    """What is known of the dataset step: the Q&A pairs kept after the filters and dedup
    (``filtered``) and after the quality judge too (``kept``), each None while a reply it depends on
    is not cached, and why not."""

    kept: list[dict[str, Any]] | None
    why: str
    estimates: dict[str, PassEstimate] = field(default_factory=dict)
    filtered: list[dict[str, Any]] | None = None


def system_prompt(config: DownstreamConfig, settings: DatasetSettings) -> str:
    listing = read_json(config.selected) if config.selected is not None else {}
    channel = str((listing.get("channel") or {}).get("name") or "this channel")
    return settings.system_prompt.replace("{channel}", channel)


def downstream_passes(
    pairs: Sequence[ChunkPairs],
    config: DownstreamConfig,
    llm: LLMSettings,
    llm_config: Mapping[str, Any],
    per_unit: PerUnit,
) -> dict[str, PassEstimate]:
    """The estimate of every enabled pass after the answers, in run order (quality, augment, judge).

    ``per_unit(pass, llm)``: expected output tokens per unit of a pass for the model of ``llm``."""
    dataset = settings_from(DatasetSettings, config.dataset, "dataset")
    system = system_prompt(config, dataset)
    replay = _quality(pairs, config, dataset, system, llm, per_unit)
    if config.augment is not None:
        augment = settings_from(AugmentSettings, config.augment, "augment")
        if augment.paraphrases > 0:
            replay.estimates["augment"] = _augment(pairs, replay, augment, dataset, system, llm, per_unit)
    if config.judge is not None:
        judge = settings_from(JudgeSettings, config.judge, "judge")
        if judge.enabled:
            judge_llm = judge_llm_settings(llm_config, judge)
            replay.estimates["judge"] = _judge(pairs, replay, judge, config, dataset, judge_llm, per_unit)
    return replay.estimates


def _quality(
    pairs: Sequence[ChunkPairs],
    config: DownstreamConfig,
    dataset: DatasetSettings,
    system: str,
    llm: LLMSettings,
    per_unit: PerUnit,
) -> Replay:
    """The dataset step up to the split: filters and dedup, then the quality judge when it is on."""
    unknown = sum(1 for item in pairs if not item.exact)
    kept: list[dict[str, Any]] | None = None
    why = f"the answer replies of {unknown} chunks are not cached yet"
    if not unknown:
        rows = sorted((row for item in pairs for row in item.rows), key=lambda r: str(r["qa_id"]))
        kept = filter_and_dedup(rows, dataset, system, Drops())
    quality = settings_from(QualitySettings, config.quality, "quality") if config.quality else None
    if quality is None or not quality.enabled:
        return Replay(kept, why, filtered=kept)
    prompt = load_prompt(quality.prompt, QUALITY_PLACEHOLDERS)
    tally = PassTally()
    per, cap = per_unit("quality", llm), llm.max_tokens
    if kept is None:
        for item in pairs:
            if item.rows:
                request = rating_request(item.chunk, item.rows, prompt, llm)
                project_request(tally, request, len(item.rows), per, cap)
        note = (
            f"{tally.projected} quality requests are projected ({why}): one per chunk with its expected "
            f"pairs, placeholder questions and {PLACEHOLDER_ANSWER_CHARS}-character answers where a "
            "reply is missing, before the dataset's filters and dedup."
        )
        return Replay(None, why, {"quality": PassEstimate(tally, prompt, llm, note)}, kept)
    chunks = {item.chunk.chunk_id: item.chunk for item in pairs}
    client = LLMClient(llm)
    rated: list[dict[str, Any]] | None = []
    for _, rows, request in rating_plan(kept, chunks, prompt, llm):
        resolution = client.resolve(request, check_ratings(len(rows)))
        tally_request(tally, resolution, len(rows), per, cap)
        if resolution.missing is not None or rated is None:
            rated = None
        elif resolution.result is None:
            rated.extend(rows)  # every reply invalid: the pass keeps the pairs unrated
        else:
            ratings = {int(r["index"]): r for r in resolution.result.data["ratings"]}
            rated.extend(r for n, r in enumerate(rows, 1) if verdict(ratings[n], quality.threshold) is None)
    estimates = {"quality": PassEstimate(tally, prompt, llm)}
    if rated is None:
        why = f"the quality ratings of {tally.misses} chunks are not cached yet"
        return Replay(None, why, estimates, kept)
    return Replay(sorted(rated, key=lambda r: str(r["qa_id"])), why, estimates, kept)


def _split(kept: Sequence[dict[str, Any]], dataset: DatasetSettings) -> dict[str, list[dict[str, Any]]]:
    """The kept pairs by split, as build_dataset assigns their videos (ConfigError when it cannot)."""
    assignment = split_videos([row["video_id"] for row in kept], dataset.split, dataset.seed)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "valid": [], "test": []}
    for row in kept:
        splits[assignment[row["video_id"]]].append(row)
    return splits


def _known_split(
    replay: Replay, dataset: DatasetSettings
) -> tuple[dict[str, list[dict[str, Any]]] | None, str]:
    """The split of the kept pairs, else of the filtered ones (the quality judge assumed to drop none),
    None when neither is known or the videos cannot fill the splits; and why it is not exact."""
    rows = replay.kept if replay.kept is not None else replay.filtered
    if rows is None:
        return None, replay.why
    try:
        return _split(rows, dataset), replay.why
    except ConfigError as exc:
        return None, str(exc)


ASSUMED = "the split by video of the pairs the filters and dedup keep, assuming the quality judge drops none"


def _augment(
    pairs: Sequence[ChunkPairs],
    replay: Replay,
    settings: AugmentSettings,
    dataset: DatasetSettings,
    system: str,
    llm: LLMSettings,
    per_unit: PerUnit,
) -> PassEstimate:
    """The paraphrase requests of the train chunks: looked up when the split is known, else projected."""
    prompt = load_prompt(settings.prompt, AUGMENT_PLACEHOLDERS)
    n, tally = settings.paraphrases, PassTally()
    per, cap = per_unit("augment", llm), llm.max_tokens
    splits, why = _known_split(replay, dataset)
    if splits is not None:
        train = [chat_example(row, system) for row in splits["train"]]
        client = LLMClient(llm)
        for _, examples, request in paraphrase_plan(train, n, prompt, llm):
            units = len(examples) * n
            if replay.kept is None:
                project_request(tally, request, units, per, cap)
            else:
                resolution = client.resolve(request, check_paraphrases(len(examples), n))
                tally_request(tally, resolution, units, per, cap)
        if replay.kept is not None:
            return PassEstimate(tally, prompt, llm)
        note = f"{tally.projected} augment requests are projected ({why}): the train chunks of {ASSUMED}."
        return PassEstimate(tally, prompt, llm, note)
    items = []
    for item in pairs:
        if item.rows:
            examples = [chat_example(row, system) for row in item.rows]
            request = paraphrase_request(item.chunk.title, examples, n, prompt, llm)
            items.append((request, len(item.rows) * n))
    share = dataset.split["train"]
    project_share(tally, items, round(share * len(items)), per, cap)
    note = (
        f"{tally.projected} augment requests are projected ({why}): dataset.split.train {share:g} of "
        f"the {len(items)} chunks with pairs, each asking {n} paraphrases of the chunk's expected pairs."
    )
    return PassEstimate(tally, prompt, llm, note)


def answer_rows(rows: Sequence[Mapping[str, Any]], max_new_tokens: int) -> list[dict[str, Any]]:
    """answers.jsonl rows for ``rows`` (Q&A pairs) with placeholder base and tuned answers."""
    cap = round(max_new_tokens * CHARS_PER_TOKEN)
    answers = {model: filler(min(chars, cap)) for model, chars in JUDGED_ANSWER_CHARS.items()}
    return [
        {
            "index": index,
            "question": row["question"],
            "reference": row["answer"],
            **{model: {"answer": text} for model, text in answers.items()},
            "meta": {"chunk_id": row["chunk_id"]},
        }
        for index, row in enumerate(rows)
    ]


def _judge(
    pairs: Sequence[ChunkPairs],
    replay: Replay,
    settings: JudgeSettings,
    config: DownstreamConfig,
    dataset: DatasetSettings,
    llm: LLMSettings,
    per_unit: PerUnit,
) -> PassEstimate:
    """The judge's two requests per test question, projected (the answers come after training)."""
    prompt = load_prompt(settings.prompt, JUDGE_PLACEHOLDERS)
    chunks = {item.chunk.chunk_id: item.chunk for item in pairs}
    tally = PassTally()
    if config.max_new_tokens is None:
        raise ValueError("the judge's estimate needs evaluate.max_new_tokens")
    cap = round(config.max_new_tokens * CHARS_PER_TOKEN)
    lengths = ", ".join(f"{m} {min(c, cap)}" for m, c in JUDGED_ANSWER_CHARS.items())
    splits, why = _known_split(replay, dataset)
    test = splits["test"] if splits is not None else None
    rows = test if test is not None else [row for item in pairs for row in item.rows]
    plan = judge_plan(answer_rows(rows, config.max_new_tokens), chunks, prompt, llm)
    items: list[tuple[LLMRequest, int]] = [(r, 1) for question in plan for r in question.requests]
    share = 1.0 if test is not None else dataset.split["test"]
    count = 2 * round(share * len(plan))
    project_share(tally, items, count, per_unit("judge", llm), llm.max_tokens)
    if replay.kept is not None:
        where = f"the {len(plan)} questions of the test split, known from the cached replies"
    elif test is not None:
        where = f"the {len(plan)} questions of the test split in {ASSUMED} ({why})"
    else:
        where = f"dataset.split.test {share:g} of the {len(plan)} expected pairs ({why})"
    note = (
        f"{count} judge requests are projected (the base and tuned answers exist only after training): "
        f"two per test question, {where}, with answers of the sample's mean length in characters "
        f"({lengths}; capped at evaluate.max_new_tokens)."
    )
    return PassEstimate(tally, prompt, llm, note)
