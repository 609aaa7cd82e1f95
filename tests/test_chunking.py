from __future__ import annotations

import itertools
import json
from pathlib import Path

from tubetune.chunking import chunk_transcript, estimate_tokens, speech_snippets

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "transcripts"


def _snippets(texts: list[str], gap_after: int | None = None) -> list[dict[str, float | str]]:
    rows: list[dict[str, float | str]] = []
    t = 0.0
    for i, text in enumerate(texts):
        rows.append({"text": text, "start": t, "duration": 3.0})
        t += len(text.split()) / 2.6 + (5.0 if i == gap_after else 0.0)
    return rows


def test_chunks_respect_size_and_cover_every_word() -> None:
    raw = json.loads((SAMPLE / "Jk5Lz0Xc2Vb.json").read_text())
    chunks = chunk_transcript("Jk5Lz0Xc2Vb", "t", raw, max_tokens=300, min_tokens=60)
    assert len(chunks) > 3
    assert all(c.n_tokens <= 300 for c in chunks[:-1])
    words = " ".join(s.text for s in speech_snippets(raw)).split()
    assert " ".join(c.text for c in chunks).split() == words
    assert [c.chunk_id for c in chunks][:2] == ["Jk5Lz0Xc2Vb-c000", "Jk5Lz0Xc2Vb-c001"]
    assert all(a.end > b.start for a, b in itertools.pairwise(chunks))
    assert "[Music]" not in " ".join(c.text for c in chunks)


def test_cut_prefers_sentence_end() -> None:
    texts = ["one two three four five six seven eight"] * 6
    texts[3] = "this sentence ends here."
    chunks = chunk_transcript("abcdefghijk", "t", _snippets(texts), max_tokens=55, min_tokens=1)
    assert chunks[0].text.endswith("ends here.")


def test_cut_prefers_pause_when_no_punctuation() -> None:
    texts = ["one two three four five six seven eight"] * 6
    chunks = chunk_transcript("abcdefghijk", "t", _snippets(texts, gap_after=3), max_tokens=55, min_tokens=1)
    assert len(chunks[0].text.split()) == 32


def test_small_tail_is_merged() -> None:
    texts = ["word " * 10] * 5
    chunks = chunk_transcript("abcdefghijk", "t", _snippets(texts), max_tokens=55, min_tokens=20)
    assert estimate_tokens(chunks[-1].text) >= 20
