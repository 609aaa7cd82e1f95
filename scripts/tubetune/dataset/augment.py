"""Augmentation (optional LLM pass of ``build_dataset``, after the split): N paraphrased questions per
TRAIN question, each with the original answer.

One request per chunk carries the chunk's train pairs (question and answer, numbered) and N. Each
paraphrase becomes a train example with the original's answer and meta, ``qa_id`` ``<original>-p<k>``
and ``augmented_from`` (the original's qa_id). Paraphrases are checked like the originals (question
length, example length) and deduplicated with the dataset's near-duplicate check against each other
and against EVERY original question of every split, so that no paraphrase copies a valid or test
question. They go into train.jsonl only. A request that fails for good skips its chunk's
paraphrases, with the reason counted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tubetune.dataset.dedup import find_duplicates
from tubetune.dataset.passes import pass_client, write_usage, zero_usage
from tubetune.errors import TubetuneError
from tubetune.generate.prompts import PromptTemplate, load_prompt, prompt_request
from tubetune.jsonio import write_json
from tubetune.llm.batch import PlannedRequest
from tubetune.llm.client import ExtraCheck, LLMClient
from tubetune.llm.request import LLMRequest
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

logger = logging.getLogger(__name__)

PASS = "augment"
PLACEHOLDERS = ("title", "pairs", "n")
PARAPHRASE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "paraphrases": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "questions": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["index", "questions"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["paraphrases"],
    "additionalProperties": False,
}

# Why a paraphrase is not added (stats.json augment.dropped).
DUPLICATE_OF_ORIGINAL = {
    "exact": "exact duplicate of an original question",
    "near": "near-duplicate of an original question",
}
DUPLICATE_OF_PARAPHRASE = "duplicate of another paraphrase"


@dataclass(frozen=True)
class AugmentSettings:
    """The config section ``augment``; built with ``settings_from(AugmentSettings, values, "augment")``."""

    paraphrases: int
    prompt: str


@dataclass
class AugmentOutcome:
    """The train examples with the paraphrases after their originals, and the statistics."""

    train: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def numbered_pairs(examples: Sequence[Mapping[str, Any]]) -> str:
    return "\n\n".join(
        f"{i}. Question: {_question(ex)}\n   Answer: {_answer(ex)}" for i, ex in enumerate(examples, start=1)
    )


def paraphrase_request(
    title: str, examples: Sequence[Mapping[str, Any]], n: int, prompt: PromptTemplate, llm: LLMSettings
) -> LLMRequest:
    """The request for ``n`` paraphrases of each of ``examples`` (the train examples of one chunk)."""
    user = prompt.render(title=title, pairs=numbered_pairs(examples), n=n)
    return prompt_request(prompt, user, llm, PARAPHRASE_SCHEMA)


def check_paraphrases(n_questions: int, n: int) -> ExtraCheck:
    """An extra validator for the LLM layer: one entry per question, at most ``n`` paraphrases each."""

    def validate(data: Any) -> None:
        items = data["paraphrases"]
        indices = sorted(item["index"] for item in items)
        if indices != list(range(1, n_questions + 1)):
            raise ValueError(f"expected one entry for each index 1..{n_questions}, got {indices}")
        for item in items:
            if len(item["questions"]) > n:
                raise ValueError(
                    f"entry {item['index']} has {len(item['questions'])} paraphrases, asked for {n}"
                )

    return validate


def paraphrase_plan(
    train: Sequence[dict[str, Any]], n: int, prompt: PromptTemplate, llm: LLMSettings
) -> list[tuple[str, list[dict[str, Any]], LLMRequest]]:
    """Every paraphrase request: (chunk id, its train examples in order, request), one per chunk."""
    by_chunk: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for example in train:
        by_chunk[str(example["meta"]["chunk_id"])].append(example)
    return [
        (
            chunk_id,
            examples,
            paraphrase_request(str(examples[0]["meta"].get("title", "")), examples, n, prompt, llm),
        )
        for chunk_id, examples in by_chunk.items()
    ]


def paraphrase_example(
    original: Mapping[str, Any], question: str, number: int, prompt_hash: str
) -> dict[str, Any]:
    """A train example: ``original`` with its question replaced, its meta marked as augmented (the
    original's qa_id, the paraphrase prompt's hash)."""
    messages = [dict(m) for m in original["messages"]]
    for message in messages:
        if message["role"] == "user":
            message["content"] = question
    meta = dict(original["meta"])
    meta.update(
        qa_id=f"{meta['qa_id']}-p{number}", augmented_from=meta["qa_id"], augment_prompt_hash=prompt_hash
    )
    return {"messages": messages, "meta": meta}


def augment_train(
    splits: Mapping[str, Sequence[dict[str, Any]]],
    settings: AugmentSettings,
    llm: LLMSettings,
    problem: Callable[[Mapping[str, Any]], str | None],
    near_duplicate_threshold: float,
    usage_path: str | Path,
    client: LLMClient | None = None,
) -> AugmentOutcome:
    """Paraphrase every train question ``settings.paraphrases`` times; ``problem`` (an example -> why it
    is unfit, or None) is the dataset's filter. The usage record goes to ``usage_path``."""
    started = time.monotonic()
    n = settings.paraphrases
    train = list(splits["train"])
    prompt = load_prompt(settings.prompt, PLACEHOLDERS)
    plan = paraphrase_plan(train, n, prompt, llm)
    items = [(request, check_paraphrases(len(examples), n)) for _, examples, request in plan]
    if client is None:
        planned = [
            PlannedRequest(r, v, chunk_id) for (r, v), (chunk_id, _, _) in zip(items, plan, strict=True)
        ]
        client = pass_client(llm, PASS, planned, usage_path)
    outcomes = client.complete_all(items, "paraphrase train questions", "chunk")
    dropped: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    candidates: list[tuple[int, dict[str, Any]]] = []  # (position of the original in train, example)
    position = {id(example): i for i, example in enumerate(train)}
    returned = 0
    for (chunk_id, examples, _), result in zip(plan, outcomes, strict=True):
        if isinstance(result, TubetuneError):
            logger.warning("%s: no paraphrases (%s)", chunk_id, result)
            errors[str(result)[:200]] += 1
            continue
        for item in sorted(result.data["paraphrases"], key=lambda i: i["index"]):
            original = examples[item["index"] - 1]
            for number, text in enumerate(item["questions"], start=1):
                returned += 1
                example = paraphrase_example(original, " ".join(str(text).split()), number, prompt.hash)
                reason = problem(example)
                if reason is not None:
                    dropped[reason] += 1
                else:
                    candidates.append((position[id(original)], example))
    added = _deduplicated(candidates, splits, near_duplicate_threshold, dropped)
    after_original: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for index, example in added:
        after_original[index].append(example)
    augmented = [row for i, example in enumerate(train) for row in (example, *after_original[i])]
    client.log_summary()
    write_usage(client, llm, PASS, usage_path, started)
    stats = {
        "enabled": True,
        "paraphrases_per_question": n,
        "requests": len(plan),
        "requested": n * len(train),
        "returned": returned,
        "added": len(added),
        "dropped": dict(sorted(dropped.items())),
        "errors": dict(sorted(errors.items())),
        "train_before": len(train),
        "train_after": len(augmented),
    }
    logger.info(
        "augment: %d of %d paraphrases added, train %d -> %d",
        len(added),
        returned,
        len(train),
        len(augmented),
    )
    return AugmentOutcome(train=augmented, stats=stats)


def _deduplicated(
    candidates: Sequence[tuple[int, dict[str, Any]]],
    splits: Mapping[str, Sequence[Mapping[str, Any]]],
    threshold: float,
    dropped: Counter[str],
) -> list[tuple[int, dict[str, Any]]]:
    """The candidates that duplicate no original question (of any split) and no earlier candidate."""
    originals = [
        _question(example) for name in ("train", "valid", "test") for example in splits.get(name, ())
    ]
    texts = originals + [_question(example) for _, example in candidates]
    removed: set[int] = set()
    for dup in find_duplicates(texts, threshold):
        if dup.index < len(originals):
            continue  # the originals were deduplicated before the split
        removed.add(dup.index - len(originals))
        dropped[
            DUPLICATE_OF_ORIGINAL[dup.kind] if dup.kept < len(originals) else DUPLICATE_OF_PARAPHRASE
        ] += 1
    return [candidate for i, candidate in enumerate(candidates) if i not in removed]


def _question(example: Mapping[str, Any]) -> str:
    return next(str(m["content"]) for m in example["messages"] if m["role"] == "user")


def _answer(example: Mapping[str, Any]) -> str:
    return next(str(m["content"]) for m in example["messages"] if m["role"] == "assistant")


def augment_pass(
    splits: Mapping[str, Sequence[dict[str, Any]]],
    augment_config: Mapping[str, Any],
    llm: LLMSettings,
    problem: Callable[[Mapping[str, Any]], str | None],
    near_duplicate_threshold: float,
    usage_path: str | Path,
    client: LLMClient | None = None,
) -> AugmentOutcome:
    """The pass as ``build_dataset`` runs it: ``augment.paraphrases: 0``, train unchanged, no request,
    a zero usage record."""
    settings = settings_from(AugmentSettings, augment_config, "augment")
    if settings.paraphrases == 0:
        write_json(usage_path, zero_usage(llm, PASS))
        return AugmentOutcome(
            train=list(splits["train"]), stats={"enabled": False, "paraphrases_per_question": 0}
        )
    return augment_train(splits, settings, llm, problem, near_duplicate_threshold, usage_path, client)
