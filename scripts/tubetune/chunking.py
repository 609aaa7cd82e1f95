"""Cut a transcript into chunks of about ``max_tokens`` on sentence ends or pauses.

Token counts are estimated (words x 1.3, the usual ratio for English BPE tokenizers) so chunking does
not depend on the model being trained: changing the base model must not invalidate LLM responses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

TOKENS_PER_WORD = 1.3
_NON_SPEECH = re.compile(r"^\s*[\[(][^\])]*[\])]\s*$")  # [Music], (applause)
_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*\s*$")
PAUSE_S = 1.0


@dataclass(frozen=True)
class Snippet:
    text: str
    start: float
    duration: float


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    video_id: str
    title: str
    index: int
    start: float
    end: float
    n_tokens: int
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Chunk:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text.split()) * TOKENS_PER_WORD)


def speech_snippets(raw: Sequence[dict[str, Any]]) -> list[Snippet]:
    """Snippets with text, dropping non-speech annotations such as ``[Music]``."""
    snippets = []
    for item in raw:
        text = " ".join(str(item["text"]).split())
        if not text or _NON_SPEECH.match(text):
            continue
        snippets.append(Snippet(text=text, start=float(item["start"]), duration=float(item["duration"])))
    return snippets


def _boundary_strength(snippets: Sequence[Snippet], i: int) -> int:
    """How good a cut after snippet ``i`` is: 2 sentence end, 1 pause, 0 anywhere else."""
    if _SENTENCE_END.search(snippets[i].text):
        return 2
    if i + 1 < len(snippets):
        words = len(snippets[i].text.split())
        expected_end = snippets[i].start + words / 2.6
        if snippets[i + 1].start - expected_end >= PAUSE_S:
            return 1
    return 0


def split_snippets(snippets: Sequence[Snippet], max_tokens: int, min_tokens: int) -> list[list[Snippet]]:
    """Greedy packing; each cut goes to the strongest boundary in the last 40% of a full chunk."""
    groups: list[list[Snippet]] = []
    current: list[Snippet] = []
    tokens = 0
    for snippet in snippets:
        size = estimate_tokens(snippet.text)
        if current and tokens + size > max_tokens:
            window_start = max(1, math.floor(len(current) * 0.6))
            best, best_strength = len(current), -1
            for i in range(len(current) - 1, window_start - 2, -1):
                strength = _boundary_strength(current, i)
                if strength > best_strength:
                    best, best_strength = i + 1, strength
                if strength == 2:
                    break
            groups.append(current[:best])
            current = current[best:]
            tokens = sum(estimate_tokens(s.text) for s in current)
        current.append(snippet)
        tokens += size
    if current:
        if groups and tokens < min_tokens:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return groups


def chunk_transcript(
    video_id: str, title: str, raw_snippets: Sequence[dict[str, Any]], max_tokens: int, min_tokens: int
) -> list[Chunk]:
    chunks = []
    for index, group in enumerate(split_snippets(speech_snippets(raw_snippets), max_tokens, min_tokens)):
        text = " ".join(s.text for s in group)
        chunks.append(
            Chunk(
                chunk_id=f"{video_id}-c{index:03d}",
                video_id=video_id,
                title=title,
                index=index,
                start=round(group[0].start, 3),
                end=round(group[-1].start + group[-1].duration, 3),
                n_tokens=estimate_tokens(text),
                text=text,
            )
        )
    return chunks
