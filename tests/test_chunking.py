from __future__ import annotations

import itertools
import json
from pathlib import Path

from tubetune.generate.chunk import (
    chunk,
    chunk_transcript,
    count_speech,
    estimate_tokens,
    remove_caption_artifacts,
    speech_snippets,
    too_little_speech,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "transcripts"
CHUNK_CONFIG = {"max_tokens": 600, "min_tokens": 120, "min_words": 150}


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


def test_caption_artifacts_are_removed() -> None:
    clean = remove_caption_artifacts
    assert clean("[Music] so the dough [Applause] rises") == "so the dough rises"
    assert clean("that's a [ __ ] mess [Laughter]") == "that's a mess"
    assert clean(">> and then   >>we fold") == "and then we fold"
    assert clean("♪ rise and shine little loaf ♪ okay let's bake") == "okay let's bake"
    assert clean("(upbeat music)") == ""
    assert clean("(which is the point)") == ""  # a line wholly in parentheses is a caption note
    assert clean("fold it (audience laughing) twice") == "fold it twice"
    assert clean("use rye (about 20 percent) for flavour") == "use rye (about 20 percent) for flavour"
    assert clean("no  tags\there, ok?") == "no tags here, ok?"


def test_sample_text_without_artifacts_is_unchanged() -> None:
    raw = json.loads((SAMPLE / "Jk5Lz0Xc2Vb.json").read_text())
    speech = [item for item in raw if item["text"] != "[Music]"]
    assert [s.text for s in speech_snippets(raw)] == [" ".join(item["text"].split()) for item in speech]


def test_artifacts_never_reach_chunk_text() -> None:
    texts = [
        "[Music]",
        "so today [Applause] we bake bread.",
        "(laughs)",
        ">> it is a [ __ ] good loaf ♪ la ♪",
    ]
    (chunk,) = chunk_transcript("abcdefghijk", "t", _snippets(texts), max_tokens=600, min_tokens=1)
    assert chunk.text == "so today we bake bread. it is a good loaf"


def test_filler_word_that_dominates_is_not_speech() -> None:
    music_only = speech_snippets(_snippets(["[Music]", "you", "[Music] you you", "thank you"] * 60))
    count = count_speech(music_only)
    assert (count.words, count.filler, count.filler_repeats, count.speech_words) == (300, "you", 240, 60)
    assert too_little_speech(count, 150) == (
        "too little speech: 60 words after removing caption artifacts and 240 repeats of 'you' "
        "(chunk.min_words: 150)"
    )
    # Common words in real speech never make up half of it.
    real = speech_snippets(_snippets(["you know you can fold the dough you see"] * 20))
    assert count_speech(real).filler is None
    assert too_little_speech(count_speech(real), 150) is None


def _transcript(tmp_path: Path, texts: list[str], status: str = "ok") -> Path:
    path = tmp_path / "transcript.json"
    record: dict[str, object] = {"video_id": "mmmmmmmmmmm", "title": "Intro music", "status": status}
    if status == "ok":
        record["snippets"] = _snippets(texts)
    else:
        record["reason"] = "transcripts disabled"
    path.write_text(json.dumps(record))
    return path


def test_music_only_transcript_gets_no_chunks_and_a_reason(tmp_path: Path) -> None:
    transcript = _transcript(tmp_path, ["[Music]", "you", "[Music] you you"])
    n = chunk(transcript, tmp_path / "c.jsonl", tmp_path / "s.json", CHUNK_CONFIG)
    assert n == 0
    assert (tmp_path / "c.jsonl").read_text() == ""
    status = json.loads((tmp_path / "s.json").read_text())
    assert status == {
        "video_id": "mmmmmmmmmmm",
        "title": "Intro music",
        "status": "skipped",
        "stage": "chunk",
        "reason": "too little speech: 3 words after removing caption artifacts (chunk.min_words: 150)",
        "words": 3,
        "chunks": 0,
    }


def test_transcript_at_the_limit_is_kept_and_one_word_less_is_not(tmp_path: Path) -> None:
    words = [f"word{i}" for i in range(150)]
    texts = ["[Music]"] + [" ".join(words[i : i + 10]) for i in range(0, 150, 10)]
    chunks, status = tmp_path / "c.jsonl", tmp_path / "s.json"
    kept = chunk(_transcript(tmp_path, texts), chunks, status, CHUNK_CONFIG)
    assert kept == 1
    assert json.loads(status.read_text())["status"] == "ok"
    texts[-1] = " ".join(words[140:149])
    skipped = chunk(_transcript(tmp_path, texts), chunks, status, CHUNK_CONFIG)
    assert skipped == 0
    assert json.loads(status.read_text())["reason"].startswith("too little speech: 149 words")


def test_skipped_transcript_passes_its_reason_on(tmp_path: Path) -> None:
    transcript = _transcript(tmp_path, [], status="skipped")
    assert chunk(transcript, tmp_path / "c.jsonl", tmp_path / "s.json", CHUNK_CONFIG) == 0
    status = json.loads((tmp_path / "s.json").read_text())
    assert (status["stage"], status["reason"]) == ("transcript", "transcripts disabled")
