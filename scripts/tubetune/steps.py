"""Small steps that need no module of their own."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tubetune.chunking import chunk_snippets, count_speech, speech_snippets, too_little_speech
from tubetune.jsonio import read_json, write_json, write_jsonl

logger = logging.getLogger(__name__)


def chunk_step(
    transcript_path: str | Path,
    out_path: str | Path,
    status_path: str | Path,
    chunk_config: Mapping[str, Any],
) -> int:
    """Chunk one transcript file; a skipped video gives an empty chunk file.

    ``status_path`` gets the video's chunk status: ``{"video_id", "title", "status": "ok", "words",
    "chunks"}``, or for a video without chunks ``"status": "skipped"`` with the ``stage`` that skipped it
    ("transcript" or "chunk") and the ``reason``.
    """
    transcript = read_json(transcript_path)
    video_id = str(transcript["video_id"])
    title = str(transcript.get("title") or video_id)
    status: dict[str, Any] = {"video_id": video_id, "title": title}
    if transcript.get("status") != "ok":
        reason = str(transcript.get("reason"))
        logger.info("%s skipped earlier (%s): no chunks", video_id, reason)
        status |= {"status": "skipped", "stage": "transcript", "reason": reason}
        write_json(status_path, status | {"chunks": 0})
        return write_jsonl(out_path, [])
    snippets = speech_snippets(transcript["snippets"])
    count = count_speech(snippets)
    too_little = too_little_speech(count, int(chunk_config["min_words"]))
    if too_little is not None:
        logger.info("%s skipped: %s", video_id, too_little)
        status |= {"status": "skipped", "stage": "chunk", "reason": too_little}
        write_json(status_path, status | {"words": count.words, "chunks": 0})
        return write_jsonl(out_path, [])
    chunks = chunk_snippets(
        video_id=video_id,
        title=title,
        snippets=snippets,
        max_tokens=int(chunk_config["max_tokens"]),
        min_tokens=int(chunk_config["min_tokens"]),
    )
    logger.info("%d words, %d chunks, tokens %s", count.words, len(chunks), [c.n_tokens for c in chunks])
    write_json(status_path, status | {"status": "ok", "words": count.words, "chunks": len(chunks)})
    return write_jsonl(out_path, (c.to_dict() for c in chunks))
