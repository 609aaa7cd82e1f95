"""Cut a transcript into chunks of about ``max_tokens`` on sentence ends or pauses.

Token counts are estimated (words x 1.3, the usual ratio for English BPE tokenizers) so chunking does
not depend on the model being trained: changing the base model must not invalidate LLM responses.

Caption artifacts (non-speech tags such as ``[Music]``, ``(applause)``, ``[ __ ]``, ``♪ ... ♪``, ``>>``)
are removed before chunking; a caption line without them keeps its text exactly.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tubetune.jsonio import read_json, write_json, write_jsonl
from tubetune.settings import settings_from

logger = logging.getLogger(__name__)

TOKENS_PER_WORD = 1.3
# Square brackets hold only non-speech in captions: [Music], [Applause], [Laughter], [ __ ] (censored).
_BRACKETED = re.compile(r"\[[^\[\]]*\]")
# Parentheses may hold speech, so only a whole parenthesised line or a short sound tag is removed.
_PARENTHESISED_LINE = re.compile(r"^\([^()]*\)$")
_SOUND_WORDS = (
    r"music|applau\w*|laugh\w*|chuckl\w*|giggl\w*|cheer\w*|clap\w*|sigh\w*|cough\w*|gasp\w*|groan\w*|"
    r"sniff\w*|whisper\w*|mumbl\w*|inaudible|indistinct|crosstalk|silence|foreign|singing|humming|"
    r"whistl\w*|beep\w*|bleep\w*|noise|static|upbeat"
)
_SOUND_TAG = re.compile(rf"\((?=[^()]*\b(?:{_SOUND_WORDS})\b)[^()]{{1,40}}\)", re.IGNORECASE)
# A sung passage between music notes on one caption line, or a lone note.
_NOTES = "♪♫🎵🎶"
_SUNG = re.compile(rf"[{_NOTES}][^{_NOTES}]*[{_NOTES}]|[{_NOTES}]")
_SPEAKER_MARK = re.compile(r"(?:>|&gt;){2,}")  # >> at a change of speaker
_WORD = re.compile(r"\w")
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


def remove_caption_artifacts(text: str) -> str:
    """``text`` on one line without non-speech tags; text without tags comes back with its words unchanged."""
    text = " ".join(text.split())
    if _PARENTHESISED_LINE.match(text):
        return ""
    for pattern in (_BRACKETED, _SOUND_TAG, _SUNG, _SPEAKER_MARK):
        text = pattern.sub(" ", text)
    return " ".join(text.split())


def speech_snippets(raw: Sequence[dict[str, Any]]) -> list[Snippet]:
    """Snippets with their caption artifacts removed; a snippet left without text is dropped."""
    snippets = []
    for item in raw:
        text = remove_caption_artifacts(str(item["text"]))
        if not text:
            continue
        snippets.append(Snippet(text=text, start=float(item["start"]), duration=float(item["duration"])))
    return snippets


@dataclass(frozen=True)
class SpeechCount:
    """Words of a transcript once caption artifacts are removed.

    ``filler`` is a word that makes up more than half of them, as the "you" that auto-captions write
    under music; its ``filler_repeats`` do not count as speech.
    """

    words: int
    filler: str | None = None
    filler_repeats: int = 0

    @property
    def speech_words(self) -> int:
        return self.words - self.filler_repeats


def count_speech(snippets: Sequence[Snippet]) -> SpeechCount:
    """Count words (tokens with a letter or digit) and find a filler word that dominates them."""
    words = [
        word.strip(".,!?;:…\"'()-").lower()
        for snippet in snippets
        for word in snippet.text.split()
        if _WORD.search(word)
    ]
    if not words:
        return SpeechCount(words=0)
    word, repeats = Counter(words).most_common(1)[0]
    if repeats * 2 > len(words):
        return SpeechCount(words=len(words), filler=word, filler_repeats=repeats)
    return SpeechCount(words=len(words))


def too_little_speech(count: SpeechCount, min_words: int) -> str | None:
    """Why a transcript has too little speech to ask questions about, or None."""
    if count.speech_words >= max(min_words, 1):
        return None
    limit = f"(chunk.min_words: {min_words})"
    if count.filler is None or count.words < min_words:
        return f"too little speech: {count.words} words after removing caption artifacts {limit}"
    return (
        f"too little speech: {count.speech_words} words after removing caption artifacts and "
        f"{count.filler_repeats} repeats of '{count.filler}' {limit}"
    )


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
    return chunk_snippets(video_id, title, speech_snippets(raw_snippets), max_tokens, min_tokens)


def chunk_snippets(
    video_id: str, title: str, snippets: Sequence[Snippet], max_tokens: int, min_tokens: int
) -> list[Chunk]:
    """Chunks of snippets already cleaned by :func:`speech_snippets`."""
    chunks = []
    for index, group in enumerate(split_snippets(snippets, max_tokens, min_tokens)):
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


@dataclass(frozen=True)
class ChunkSettings:
    """The config section ``chunk``; built with ``settings_from(ChunkSettings, values, "chunk")``."""

    max_tokens: int
    min_tokens: int
    min_words: int


def chunk(
    transcript_path: str | Path,
    chunks_path: str | Path,
    status_path: str | Path,
    chunk_config: Mapping[str, Any],
) -> int:
    """Cut one transcript file into ``chunks_path`` (rule ``transcripts``, for each video of its shard);
    a skipped video gives an empty file.

    ``status_path`` gets the video's chunk status: ``{"video_id", "title", "status": "ok", "words",
    "chunks"}``, or for a video without chunks ``"status": "skipped"`` with the ``stage`` that skipped it
    ("transcript" or "chunk") and the ``reason``. Returns the number of chunks.
    """
    settings = settings_from(ChunkSettings, chunk_config, "chunk")
    transcript = read_json(transcript_path)
    video_id = str(transcript["video_id"])
    title = str(transcript.get("title") or video_id)
    status: dict[str, Any] = {"video_id": video_id, "title": title}
    if transcript.get("status") != "ok":
        reason = str(transcript.get("reason"))
        logger.info("%s skipped earlier (%s): no chunks", video_id, reason)
        status |= {"status": "skipped", "stage": "transcript", "reason": reason}
        write_json(status_path, status | {"chunks": 0})
        return write_jsonl(chunks_path, [])
    snippets = speech_snippets(transcript["snippets"])
    count = count_speech(snippets)
    too_little = too_little_speech(count, settings.min_words)
    if too_little is not None:
        logger.info("%s skipped: %s", video_id, too_little)
        status |= {"status": "skipped", "stage": "chunk", "reason": too_little}
        write_json(status_path, status | {"words": count.words, "chunks": 0})
        return write_jsonl(chunks_path, [])
    chunks = chunk_snippets(video_id, title, snippets, settings.max_tokens, settings.min_tokens)
    logger.info("%d words, %d chunks, tokens %s", count.words, len(chunks), [c.n_tokens for c in chunks])
    write_json(status_path, status | {"status": "ok", "words": count.words, "chunks": len(chunks)})
    return write_jsonl(chunks_path, (c.to_dict() for c in chunks))
