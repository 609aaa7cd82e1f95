"""The quality judge (optional LLM pass of ``build_dataset``): each kept Q&A pair rated against its chunk.

One request per chunk carries the chunk's text once and its pairs, numbered. The judge rates each pair
1-5 on three criteria (grounded in the chunk, self-contained, useful to a viewer) with a one-sentence
reason; a pair with any rating under ``quality.threshold`` is dropped, named for its lowest criterion
("quality: not grounded (2/5): <reason>"). A pair whose request failed for good is kept and counted
as unrated with the reason, never dropped silently.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tubetune.dataset.passes import pass_client, write_usage, zero_usage
from tubetune.errors import TubetuneError
from tubetune.generate.chunk import Chunk
from tubetune.generate.prompts import PromptTemplate, chunk_request, load_prompt
from tubetune.generate.questions import load_chunks
from tubetune.jsonio import write_json
from tubetune.llm.batch import PlannedRequest
from tubetune.llm.client import ExtraCheck, LLMClient
from tubetune.llm.request import LLMRequest
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

logger = logging.getLogger(__name__)

PASS = "quality"
CRITERIA = ("grounded", "self_contained", "useful")
LABELS = {"grounded": "not grounded", "self_contained": "not self-contained", "useful": "not useful"}
PLACEHOLDERS = ("title", "start", "end", "chunk", "pairs")
RATING: dict[str, Any] = {"type": "integer", "enum": [1, 2, 3, 4, 5]}
QUALITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ratings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    **{name: RATING for name in CRITERIA},
                    "reason": {"type": "string"},
                },
                "required": ["index", *CRITERIA, "reason"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["ratings"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class QualitySettings:
    """The config section ``quality``; built with ``settings_from(QualitySettings, values, "quality")``."""

    enabled: bool
    prompt: str
    threshold: int


@dataclass
class QualityOutcome:
    """What the pass did: the pairs kept, the dropped rows (with reasons) and the statistics."""

    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def numbered_pairs(rows: Sequence[Mapping[str, Any]]) -> str:
    return "\n\n".join(
        f"{i}. Question: {row['question']}\n   Answer: {row['answer']}" for i, row in enumerate(rows, start=1)
    )


def rating_request(
    chunk: Chunk, rows: Sequence[Mapping[str, Any]], prompt: PromptTemplate, llm: LLMSettings
) -> LLMRequest:
    return chunk_request(chunk, prompt, llm, QUALITY_SCHEMA, pairs=numbered_pairs(rows))


def check_ratings(n_pairs: int) -> ExtraCheck:
    """An extra validator for the LLM layer: every pair rated once, a reason for every low rating."""

    def validate(data: Any) -> None:
        indices = sorted(item["index"] for item in data["ratings"])
        if indices != list(range(1, n_pairs + 1)):
            raise ValueError(f"expected one rating for each index 1..{n_pairs}, got {indices}")

    return validate


def rating_plan(
    rows: Sequence[dict[str, Any]], chunks: Mapping[str, Chunk], prompt: PromptTemplate, llm: LLMSettings
) -> list[tuple[str, list[dict[str, Any]], LLMRequest]]:
    """Every rating request: (chunk id, its pairs in order, request), one per chunk with kept pairs."""
    by_chunk: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_chunk[str(row["chunk_id"])].append(row)
    plan = []
    for chunk_id, pairs in by_chunk.items():
        chunk = chunks.get(chunk_id)
        if chunk is None:
            raise TubetuneError(f"quality: the chunk {chunk_id} of {pairs[0]['qa_id']} is in no chunks file")
        plan.append((chunk_id, pairs, rating_request(chunk, pairs, prompt, llm)))
    return plan


def verdict(ratings: Mapping[str, Any], threshold: int) -> str | None:
    """The drop reason of a rated pair ("not grounded (2/5): <reason>"), or None to keep it."""
    low = [name for name in CRITERIA if int(ratings[name]) < threshold]
    if not low:
        return None
    worst = min(low, key=lambda name: int(ratings[name]))
    reason = " ".join(str(ratings.get("reason") or "").split()) or "no reason given"
    return f"{LABELS[worst]} ({int(ratings[worst])}/5): {reason}"


def rate_pairs(
    rows: Sequence[dict[str, Any]],
    chunk_paths: Sequence[str | Path],
    prompt_path: str | Path,
    llm: LLMSettings,
    settings: QualitySettings,
    usage_path: str | Path,
    client: LLMClient | None = None,
) -> QualityOutcome:
    """Rate ``rows`` against their chunks, drop those under the threshold; the usage record into
    ``usage_path`` (``client``: a test's client; by default one for the pass, batch mode included)."""
    started = time.monotonic()
    prompt = load_prompt(prompt_path, PLACEHOLDERS)
    chunks = {chunk.chunk_id: chunk for chunk in load_chunks(*chunk_paths)}
    plan = rating_plan(rows, chunks, prompt, llm)
    items = [(request, check_ratings(len(pairs))) for _, pairs, request in plan]
    if client is None:
        planned = [
            PlannedRequest(r, v, chunk_id) for (r, v), (chunk_id, _, _) in zip(items, plan, strict=True)
        ]
        client = pass_client(llm, PASS, planned, usage_path)
    outcomes = client.complete_all(items, "rate Q&A pairs", "chunk")
    outcome = QualityOutcome(kept=[])
    per_criterion = {name: Counter[int]() for name in CRITERIA}
    dropped_by: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    unrated = 0
    for (chunk_id, pairs, _), result in zip(plan, outcomes, strict=True):
        if isinstance(result, TubetuneError):
            logger.warning("%s: %d pairs unrated, kept (%s)", chunk_id, len(pairs), result)
            errors[_short(str(result))] += len(pairs)
            unrated += len(pairs)
            outcome.kept.extend(pairs)
            continue
        ratings = {int(item["index"]): item for item in result.data["ratings"]}
        for number, row in enumerate(pairs, start=1):
            rating = ratings[number]
            for name in CRITERIA:
                per_criterion[name][int(rating[name])] += 1
            problem = verdict(rating, settings.threshold)
            scores = {name: int(rating[name]) for name in CRITERIA}
            if problem is None:
                outcome.kept.append(row)
                continue
            dropped_by[problem.split(" (", 1)[0]] += 1
            outcome.dropped.append({**row, "stage": PASS, "reason": f"{PASS}: {problem}", "ratings": scores})
    client.log_summary()
    write_usage(client, llm, PASS, usage_path, started)
    outcome.kept.sort(key=lambda r: str(r["qa_id"]))
    outcome.stats = quality_stats(len(rows), outcome, per_criterion, dropped_by, errors, unrated, settings)
    logger.info(
        "quality: %d pairs rated, %d kept, %d dropped, %d unrated",
        len(rows) - unrated,
        len(outcome.kept),
        len(outcome.dropped),
        unrated,
    )
    return outcome


def quality_stats(
    pairs: int,
    outcome: QualityOutcome,
    per_criterion: Mapping[str, Counter[int]],
    dropped_by: Counter[str],
    errors: Counter[str],
    unrated: int,
    settings: QualitySettings,
) -> dict[str, Any]:
    """stats.json ``quality``: counts, the ratings per criterion, drops per criterion, errors."""
    criteria = {}
    for name in CRITERIA:
        counts = per_criterion[name]
        total = sum(counts.values())
        criteria[name] = {
            "ratings": {str(score): counts[score] for score in range(1, 6)},
            "mean": round(sum(s * c for s, c in counts.items()) / total, 2) if total else None,
            "below_threshold": sum(c for s, c in counts.items() if s < settings.threshold),
        }
    return {
        "enabled": True,
        "threshold": settings.threshold,
        "pairs": pairs,
        "rated": pairs - unrated,
        "kept": len(outcome.kept),
        "dropped": len(outcome.dropped),
        "unrated": unrated,
        "per_criterion": criteria,
        "dropped_by": dict(sorted(dropped_by.items())),
        "errors": dict(sorted(errors.items())),
    }


def _short(reason: str) -> str:
    return reason if len(reason) <= 200 else reason[:199] + "…"


def quality_pass(
    rows: Sequence[dict[str, Any]],
    chunk_paths: Sequence[str | Path],
    llm: LLMSettings,
    quality_config: Mapping[str, Any],
    usage_path: str | Path,
    client: LLMClient | None = None,
) -> QualityOutcome:
    """The pass as ``build_dataset`` runs it: disabled, every pair kept, no request, a zero usage record."""
    settings = settings_from(QualitySettings, quality_config, "quality")
    if not settings.enabled:
        write_json(usage_path, zero_usage(llm, PASS))
        return QualityOutcome(kept=list(rows), stats={"enabled": False})
    return rate_pairs(rows, chunk_paths, settings.prompt, llm, settings, usage_path, client)
