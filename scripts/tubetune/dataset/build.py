"""Step 7: dedup, filter, the optional quality judge, chat JSONL in mlx-lm ``messages`` format, split by
video, the optional augmentation of the train split, statistics."""

from __future__ import annotations

import csv
import logging
import random
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tubetune.dataset.augment import augment_pass
from tubetune.dataset.dedup import find_duplicates
from tubetune.dataset.quality import quality_pass
from tubetune.errors import ConfigError, TubetuneError
from tubetune.generate.chunk import estimate_tokens
from tubetune.jsonio import atomic_write_text, read_json, read_jsonl, write_json, write_jsonl
from tubetune.llm.client import LLMClient
from tubetune.llm.settings import LLMSettings
from tubetune.llm.spend import LEDGER_MD
from tubetune.settings import settings_from

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_META = re.compile(
    r"\b(in|from) (this|the) (video|transcript|excerpt|clip)\b|\bthe (transcript|excerpt)\b", re.I
)
_ARTIFACT = re.compile(r"\[(music|applause|laughter)\]", re.I)


@dataclass(frozen=True)
class DatasetSettings:
    """The config section ``dataset``; built with ``settings_from(DatasetSettings, values, "dataset")``."""

    system_prompt: str
    near_duplicate_threshold: float
    min_question_chars: int
    min_answer_chars: int
    max_answer_chars: int
    max_example_tokens: int
    split: dict[str, float]
    seed: int

    def __post_init__(self) -> None:
        total = sum(self.split.values())
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(
                f"config error: dataset.split fractions must add up to 1 (they add up to {total:g})"
            )


@dataclass(frozen=True)
class DatasetOutputs:
    """The files rule ``build_dataset`` writes (its named outputs)."""

    train: str | Path
    valid: str | Path
    test: str | Path
    dropped: str | Path
    skipped: str | Path
    stats: str | Path
    stats_md: str | Path
    lengths: str | Path


@dataclass(frozen=True)
class LLMPasses:
    """The optional LLM passes of ``build_dataset`` (config sections ``quality`` and ``augment``), the
    ``llm`` section they run with, the chunk files the quality judge reads and the usage records the
    two passes write (zero records when a pass is off). ``client``: one client for both passes (tests)."""

    llm_config: Mapping[str, Any]
    quality_config: Mapping[str, Any]
    augment_config: Mapping[str, Any]
    chunk_paths: Sequence[str | Path]
    quality_usage: str | Path
    augment_usage: str | Path
    client: LLMClient | None = None


@dataclass
class Drops:
    """Why Q&A pairs are missing: counts per reason, and the rows the dataset step itself dropped."""

    counts: Counter[str] = field(default_factory=Counter)  # every drop, "<stage>: <reason>"
    quarantined: Counter[str] = field(default_factory=Counter)  # extraction and validation
    quarantined_questions: int = 0
    unanswered: Counter[str] = field(default_factory=Counter)  # the answer pass
    rows: list[dict[str, Any]] = field(default_factory=list)  # filtered and duplicate pairs


def quality_problem(row: Mapping[str, Any], settings: DatasetSettings) -> str | None:
    """Why a Q&A pair is not fit for training, as a short reason key, or None."""
    question, answer = str(row["question"]), str(row["answer"])
    if len(question) < settings.min_question_chars:
        return "question too short"
    if len(answer) < settings.min_answer_chars:
        return "answer too short"
    if len(answer) > settings.max_answer_chars:
        return "answer too long"
    if _ARTIFACT.search(answer):
        return "caption artifact in answer"
    if _META.search(answer):
        return "answer refers to the recording"
    if " ".join(answer.lower().split()) == " ".join(question.lower().split()):
        return "answer repeats the question"
    return None


def pair_problem(row: Mapping[str, Any], settings: DatasetSettings, system_prompt: str) -> str | None:
    """:func:`quality_problem`, then the length of the whole example."""
    problem = quality_problem(row, settings)
    if problem is None and (
        estimate_tokens(f"{system_prompt} {row['question']} {row['answer']}") > settings.max_example_tokens
    ):
        return "example too long"
    return problem


def example_problem(settings: DatasetSettings) -> Callable[[Mapping[str, Any]], str | None]:
    """:func:`pair_problem` of a chat example (a paraphrase before it joins the train split)."""

    def problem(example: Mapping[str, Any]) -> str | None:
        content = {m["role"]: str(m["content"]) for m in example["messages"]}
        row = {"question": content["user"], "answer": content["assistant"]}
        return pair_problem(row, settings, content["system"])

    return problem


def split_videos(video_ids: Sequence[str], fractions: Mapping[str, float], seed: int) -> dict[str, str]:
    """Assign each video to one split, seeded; every split with a fraction > 0 gets a video."""
    videos = sorted(set(video_ids))
    random.Random(seed).shuffle(videos)
    wanted = [name for name in SPLITS if fractions[name] > 0]
    if len(videos) < len(wanted):
        raise ConfigError(
            f"dataset: {len(videos)} video(s) with Q&A cannot fill the splits {', '.join(wanted)} "
            "(no video may be in two splits): add videos or set a split fraction to 0"
        )
    counts = {name: max(1, round(fractions[name] * len(videos))) if name in wanted else 0 for name in SPLITS}
    counts["train"] = len(videos) - counts["valid"] - counts["test"]
    if "train" in wanted and counts["train"] < 1:
        raise ConfigError(
            f"dataset: {len(videos)} videos leave none for training after valid and test: "
            "add videos or lower dataset.split.valid / dataset.split.test"
        )
    assignment: dict[str, str] = {}
    position = 0
    for name in ("test", "valid", "train"):
        for video in videos[position : position + counts[name]]:
            assignment[video] = name
        position += counts[name]
    return assignment


def chat_example(row: Mapping[str, Any], system_prompt: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": row["question"]},
            {"role": "assistant", "content": row["answer"]},
        ],
        "meta": {
            key: row[key]
            for key in (
                "qa_id",
                "video_id",
                "title",
                "chunk_id",
                "start",
                "end",
                "url",
                "question_prompt_hash",
                "answer_prompt_hash",
            )
            if key in row
        },
    }


def _describe(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"n": 0, "mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0.0}
    ordered = sorted(values)
    return {
        "n": len(values),
        "mean": round(statistics.fmean(values), 1),
        "median": float(statistics.median(values)),
        "p95": float(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]),
        "max": float(ordered[-1]),
    }


def _read_filtered(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def build_dataset(
    qa_paths: Sequence[str | Path],
    chunk_status_paths: Sequence[str | Path],
    quarantine_paths: Sequence[str | Path],
    dropped_paths: Sequence[str | Path],
    selected_path: str | Path,
    filtered_path: str | Path,
    outputs: DatasetOutputs,
    dataset_config: Mapping[str, Any],
    review_dir: str | Path,
    passes: LLMPasses | None = None,
) -> dict[str, Any]:
    """Rule ``build_dataset``: the splits, dropped.jsonl, skipped_videos.tsv, stats.json/.md and
    lengths.png, each to its path in ``outputs``.

    ``review_dir``: where the review pages are, named in the error when no Q&A pair survives.
    ``passes``: the optional LLM passes (quality judge before the split, augmentation of the train
    split after it) and their usage records; None runs neither and writes no usage record.
    """
    settings = settings_from(DatasetSettings, dataset_config, "dataset")
    listing = read_json(selected_path)
    channel = str((listing.get("channel") or {}).get("name") or "this channel")
    system_prompt = settings.system_prompt.replace("{channel}", channel)
    rows = [row for path in sorted(qa_paths, key=lambda p: Path(p).name) for row in read_jsonl(path)]
    rows.sort(key=lambda r: str(r["qa_id"]))
    drops = read_drops(quarantine_paths, dropped_paths)
    kept = filter_and_dedup(rows, settings, system_prompt, drops)
    llm = settings_from(LLMSettings, passes.llm_config, "llm") if passes is not None else None
    extra: dict[str, Any] = {}
    if passes is not None and llm is not None:
        kept, extra["quality"] = _judge(kept, passes, llm, drops)
    statuses = [read_json(path) for path in chunk_status_paths]
    skipped = _skipped_videos(statuses, filtered_path)
    if not kept:
        raise TubetuneError(
            no_usable_qa_message(
                questions=drops.quarantined_questions + sum(drops.unanswered.values()) + len(rows),
                chunks=sum(int(status.get("chunks") or 0) for status in statuses),
                quarantined=drops.quarantined,
                dropped=drops.unanswered + Counter(_reason_key(row["reason"]) for row in drops.rows),
                skipped=Counter(_reason_key(v["reason"]) for v in skipped),
                review_dir=review_dir,
            )
        )
    assignment = split_videos([row["video_id"] for row in kept], settings.split, settings.seed)
    examples: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for row in kept:
        examples[assignment[row["video_id"]]].append(chat_example(row, system_prompt))
    if passes is not None and llm is not None:
        augmented = augment_pass(
            examples,
            passes.augment_config,
            llm,
            example_problem(settings),
            settings.near_duplicate_threshold,
            passes.augment_usage,
            passes.client,
        )
        examples["train"], extra["augment"] = augmented.train, augmented.stats
    for name in SPLITS:
        write_jsonl(getattr(outputs, name), examples[name])
    write_jsonl(outputs.dropped, drops.rows)
    write_skipped_tsv(outputs.skipped, skipped)
    stats = _statistics(kept, examples, assignment, drops.counts, skipped, channel, system_prompt) | extra
    write_json(outputs.stats, stats)
    atomic_write_text(outputs.stats_md, render_stats_markdown(stats))
    plot_lengths(kept, outputs.lengths)
    logger.info(
        "dataset: %s examples (%s), %d dropped",
        stats["examples"]["total"],
        ", ".join(f"{n} {len(examples[n])}" for n in SPLITS),
        sum(drops.counts.values()),
    )
    return stats


def _judge(
    kept: Sequence[dict[str, Any]], passes: LLMPasses, llm: LLMSettings, drops: Drops
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The quality judge's pass: the pairs it keeps and its statistics; the dropped ones go to ``drops``."""
    judged = quality_pass(
        kept, passes.chunk_paths, llm, passes.quality_config, passes.quality_usage, passes.client
    )
    for row in judged.dropped:
        drops.counts[f"quality: {_reason_key(row['reason'].removeprefix('quality: '))}"] += 1
        drops.rows.append(row)
    return judged.kept, judged.stats


def read_drops(quarantine_paths: Sequence[str | Path], dropped_paths: Sequence[str | Path]) -> Drops:
    """The questions quarantined before the answer pass and those the answer pass dropped, by reason."""
    drops = Drops()
    for path in quarantine_paths:
        for row in read_jsonl(path):
            drops.counts[f"{row.get('stage', 'extract')}: {_reason_key(row.get('reason'))}"] += 1
            drops.quarantined[_reason_key(row.get("reason"))] += 1
            drops.quarantined_questions += "question" in row
    for path in dropped_paths:
        for row in read_jsonl(path):
            drops.counts[f"answer: {_reason_key(row.get('reason'))}"] += 1
            drops.unanswered[_reason_key(row.get("reason"))] += 1
    return drops


def filter_and_dedup(
    rows: Sequence[dict[str, Any]], settings: DatasetSettings, system_prompt: str, drops: Drops
) -> list[dict[str, Any]]:
    """The Q&A pairs fit for training, duplicates removed; the others go to ``drops`` with the reason.

    Quality filters run first, so a bad pair never wins over its good duplicate.
    """
    kept: list[dict[str, Any]] = []
    for row in rows:
        problem = pair_problem(row, settings, system_prompt)
        if problem is not None:
            drops.counts[f"filter: {problem}"] += 1
            drops.rows.append({**row, "reason": problem})
        else:
            kept.append(row)
    duplicates = find_duplicates([row["question"] for row in kept], settings.near_duplicate_threshold)
    for dup in duplicates:
        kind = "exact duplicate question" if dup.kind == "exact" else "near-duplicate question"
        drops.counts[f"dedup: {kind}"] += 1
        drops.rows.append(
            {
                **kept[dup.index],
                "reason": kind,
                "duplicate_of": kept[dup.kept]["qa_id"],
                "similarity": dup.similarity,
            }
        )
    removed = {d.index for d in duplicates}
    return [row for i, row in enumerate(kept) if i not in removed]


def write_skipped_tsv(path: str | Path, skipped: Sequence[Mapping[str, str]]) -> None:
    """skipped_videos.tsv: video id, title, the stage that skipped the video and why."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["video_id", "title", "stage", "reason"])
        writer.writerows([v["video_id"], v["title"], v["stage"], v["reason"]] for v in skipped)


def _reason_key(reason: Any) -> str:
    """A stable, countable form of a reason (the part before any colon or parenthesis)."""
    text = str(reason or "unknown")
    return re.split(r"[:(]", text, maxsplit=1)[0].strip() or text


def _skipped_videos(
    chunk_statuses: Sequence[Mapping[str, Any]], filtered_path: str | Path
) -> list[dict[str, str]]:
    """Videos filtered out of the listing, then videos whose chunk status says why they have no chunks."""
    skipped = [
        {"video_id": row["video_id"], "title": row["title"], "stage": "list", "reason": row["reason"]}
        for row in _read_filtered(filtered_path)
    ]
    for status in chunk_statuses:
        if status.get("status") != "ok":
            skipped.append(
                {
                    "video_id": str(status["video_id"]),
                    "title": str(status.get("title") or ""),
                    "stage": str(status["stage"]),
                    "reason": str(status.get("reason")),
                }
            )
    return skipped


def _top(counts: Counter[str], n: int = 3) -> str:
    """The ``n`` commonest reasons with their counts, e.g. "40 not a question, 8 too short, 2 other"."""
    if not counts:
        return "none"
    parts = [f"{count} {reason}" for reason, count in counts.most_common(n)]
    rest = sum(counts.values()) - sum(count for _, count in counts.most_common(n))
    return ", ".join(parts + ([f"{rest} other"] if rest else []))


def no_usable_qa_message(
    questions: int,
    chunks: int,
    quarantined: Counter[str],
    dropped: Counter[str],
    skipped: Counter[str],
    review_dir: str | Path,
) -> str:
    """One line saying why no Q&A pair is left, with the commonest quarantine, drop and skip reasons."""
    if chunks == 0:
        return (
            f"no usable Q&A: no video has chunks to ask questions about (skipped videos: {_top(skipped)}); "
            "check the source (source.*) and chunk.min_words"
        )
    return (
        f"no usable Q&A: 0 of {questions} questions from {chunks} chunk{'s' if chunks != 1 else ''} survived "
        f"(quarantined: {_top(quarantined)}; dropped: {_top(dropped)}); "
        f"check the LLM (llm.backend/llm.model) and {Path(review_dir).as_posix()}/"
    )


def _statistics(
    kept: Sequence[Mapping[str, Any]],
    examples: Mapping[str, Sequence[Mapping[str, Any]]],
    assignment: Mapping[str, str],
    drops: Counter[str],
    skipped: Sequence[Mapping[str, str]],
    channel: str,
    system_prompt: str,
) -> dict[str, Any]:
    per_video: dict[str, dict[str, Any]] = defaultdict(lambda: {"examples": 0})
    for row in kept:
        entry = per_video[row["video_id"]]
        entry.update(title=row["title"], split=assignment[row["video_id"]])
        entry["examples"] += 1
    example_chars = [len(system_prompt) + len(r["question"]) + len(r["answer"]) for r in kept]
    return {
        "channel": channel,
        "system_prompt": system_prompt,
        "examples": {name: len(examples[name]) for name in SPLITS}
        | {"total": sum(len(examples[name]) for name in SPLITS)},
        "videos": {name: sorted(v for v, s in assignment.items() if s == name) for name in SPLITS},
        "lengths_chars": {
            "question": _describe([len(r["question"]) for r in kept]),
            "answer": _describe([len(r["answer"]) for r in kept]),
            "example": _describe(example_chars),
        },
        "lengths_tokens_estimated": {
            "example": _describe(
                [estimate_tokens(f"{system_prompt} {r['question']} {r['answer']}") for r in kept]
            ),
        },
        "per_video": dict(sorted(per_video.items())),
        "dropped": dict(sorted(drops.items())),
        "dropped_total": sum(drops.values()),
        "skipped_videos": list(skipped),
    }


def render_stats_markdown(stats: Mapping[str, Any]) -> str:
    ex = stats["examples"]
    lines = [
        f"# Dataset: {stats['channel']}",
        "",
        f"{ex['total']} examples: {ex['train']} train, {ex['valid']} valid, {ex['test']} test "
        "(split by video: no video is in two splits).",
        "",
        "![lengths](lengths.png)",
        "",
        "## Lengths (characters)",
        "",
        "| | mean | median | p95 | max |",
        "|---|---|---|---|---|",
    ]
    for name, d in stats["lengths_chars"].items():
        lines.append(f"| {name} | {d['mean']} | {d['median']} | {d['p95']} | {d['max']} |")
    lines += ["", "## Per video", "", "| video | title | split | examples |", "|---|---|---|---|"]
    for video, d in stats["per_video"].items():
        lines.append(f"| `{video}` | {d['title']} | {d['split']} | {d['examples']} |")
    lines += ["", f"## Dropped ({stats['dropped_total']})", "", "| reason | count |", "|---|---|"]
    lines += [f"| {reason} | {count} |" for reason, count in stats["dropped"].items()] or ["| none | 0 |"]
    lines += [
        "",
        f"## Skipped videos ({len(stats['skipped_videos'])})",
        "",
        "| video | title | stage | reason |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{v['video_id']}` | {v['title']} | {v['stage']} | {v['reason']} |"
        for v in stats["skipped_videos"]
    ]
    lines += _passes_markdown(stats)
    lines += ["", f"LLM cost of the passes behind this dataset: [{LEDGER_MD}](../llm/ledger.md)."]
    return "\n".join(lines) + "\n"


def _passes_markdown(stats: Mapping[str, Any]) -> list[str]:
    """The "Quality judge" and "Augmentation" sections, for the passes that ran."""
    lines: list[str] = []
    quality = stats.get("quality") or {}
    if quality.get("enabled"):
        lines += [
            "",
            f"## Quality judge (threshold {quality['threshold']})",
            "",
            f"{quality['pairs']} pairs: {quality['rated']} rated, {quality['kept']} kept, "
            f"{quality['dropped']} dropped, {quality['unrated']} unrated (kept).",
            "",
            "| criterion | 1 | 2 | 3 | 4 | 5 | mean | under threshold |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, c in quality["per_criterion"].items():
            counts = " | ".join(str(c["ratings"][str(score)]) for score in range(1, 6))
            lines.append(f"| {name} | {counts} | {c['mean']} | {c['below_threshold']} |")
        lines += [f"\nUnrated: {count} ({reason})" for reason, count in quality["errors"].items()]
    augment = stats.get("augment") or {}
    if augment.get("enabled"):
        lines += [
            "",
            f"## Augmentation ({augment['paraphrases_per_question']} paraphrases per train question)",
            "",
            f"{augment['requested']} requested, {augment['returned']} returned, {augment['added']} added: "
            f"train {augment['train_before']} -> {augment['train_after']} examples (valid, test unchanged).",
            "",
            "| not added | count |",
            "|---|---|",
        ]
        lines += [f"| {reason} | {count} |" for reason, count in augment["dropped"].items()] or [
            "| none | 0 |"
        ]
        lines += [f"\nSkipped requests: {count} ({reason})" for reason, count in augment["errors"].items()]
    return lines


def plot_lengths(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key in zip(axes, ("question", "answer"), strict=True):
        ax.hist([len(r[key]) for r in rows] or [0], bins=20, color="#4C72B0")
        ax.set_title(f"{key} length (characters)")
        ax.set_ylabel("examples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
