"""Exact and near-duplicate question removal that scales: MinHash LSH candidates, rapidfuzz check.

Candidates come from a MinHash LSH index over character 4-gram shingles of the normalized question
(so "preheat" and "preheated" overlap); each candidate pair is confirmed with rapidfuzz's
token-sort ratio on content words. No all-pairs comparison.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH
from rapidfuzz import fuzz

NUM_PERM = 128
_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "for",
        "with",
        "at",
        "by",
        "from",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "do",
        "does",
        "did",
        "i",
        "you",
        "my",
        "your",
        "me",
        "we",
        "our",
        "should",
        "can",
        "could",
        "would",
        "will",
        "how",
        "what",
        "when",
        "why",
        "which",
        "who",
        "much",
        "many",
        "if",
        "so",
        "as",
        "into",
        "about",
        "there",
        "their",
        "they",
        "them",
        "than",
        "then",
        "just",
    ]
)


def normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def content_words(text: str) -> str:
    return " ".join(w for w in normalize(text).split() if w not in STOPWORDS)


# The hash permutations of every signature (seed 1), made once: MinHash builds them per instance otherwise.
_TEMPLATE = MinHash(num_perm=NUM_PERM, seed=1)


def _minhash(words: str) -> MinHash:
    """The signature of a text's content words (:func:`content_words`)."""
    signature = MinHash(
        num_perm=NUM_PERM, seed=1, permutations=_TEMPLATE.permutations, scheme=_TEMPLATE.scheme
    )
    padded = f"  {words}  "
    signature.update_batch([padded[i : i + 4].encode("utf-8") for i in range(max(1, len(padded) - 3))])
    return signature


@dataclass(frozen=True)
class Duplicate:
    index: int  # the item removed
    kept: int  # the item it duplicates
    kind: str  # "exact" or "near"
    similarity: float


def similarity(a: str, b: str) -> float:
    return fuzz.token_sort_ratio(content_words(a), content_words(b)) / 100.0


def find_duplicates(texts: Sequence[str], threshold: float) -> list[Duplicate]:
    """Items to drop, earliest occurrence kept. ``threshold`` is the confirmed similarity (0-1)."""
    duplicates: list[Duplicate] = []
    first_by_text: dict[str, int] = {}
    lsh = MinHashLSH(threshold=max(0.2, threshold - 0.4), num_perm=NUM_PERM)
    words: dict[int, str] = {}  # content words of the items in the index
    for index, text in enumerate(texts):
        key = normalize(text)
        if key in first_by_text:
            duplicates.append(Duplicate(index, first_by_text[key], "exact", 1.0))
            continue
        first_by_text[key] = index
        words[index] = content_words(text)
        signature = _minhash(words[index])
        best: tuple[float, int] | None = None
        # in index order: of equally similar earlier items, the earliest is named (the query is a set)
        for candidate in sorted(int(key) for key in lsh.query(signature)):
            score = fuzz.token_sort_ratio(words[index], words[candidate]) / 100.0
            if score >= threshold and (best is None or score > best[0]):
                best = (score, candidate)
        if best is not None:
            duplicates.append(Duplicate(index, best[1], "near", round(best[0], 3)))
            continue
        lsh.insert(str(index), signature)
    return duplicates
