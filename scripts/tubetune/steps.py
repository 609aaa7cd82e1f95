"""Small steps that need no module of their own."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tubetune.chunking import chunk_transcript
from tubetune.jsonio import read_json, write_jsonl

logger = logging.getLogger(__name__)


def chunk_step(transcript_path: str | Path, out_path: str | Path, chunk_config: Mapping[str, Any]) -> int:
    """Chunk one transcript file; a skipped video gives an empty chunk file."""
    transcript = read_json(transcript_path)
    if transcript.get("status") != "ok":
        logger.info(
            "%s skipped earlier (%s): no chunks", transcript.get("video_id"), transcript.get("reason")
        )
        return write_jsonl(out_path, [])
    chunks = chunk_transcript(
        video_id=str(transcript["video_id"]),
        title=str(transcript.get("title") or transcript["video_id"]),
        raw_snippets=transcript["snippets"],
        max_tokens=int(chunk_config["max_tokens"]),
        min_tokens=int(chunk_config["min_tokens"]),
    )
    logger.info("%d chunks, tokens %s", len(chunks), [c.n_tokens for c in chunks])
    return write_jsonl(out_path, (c.to_dict() for c in chunks))
