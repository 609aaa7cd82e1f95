"""Rule ``transcripts``: the transcript and the chunks of every video of one shard (see tubetune.shards).

YouTube transcripts are kept in a store (``source.transcript_store``, outside ``results/``) once fetched,
keyed by video id and the wanted languages: a shard job that reruns (a new video in the shard, a chunk
setting) reads them back instead of asking YouTube again, and a run stopped by an IP block keeps every
transcript fetched before it. Only transcripts with status "ok" are stored: a skipped video is asked
again the next time its shard runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from tubetune.generate.chunk import chunk
from tubetune.jsonio import write_json
from tubetune.shards import video_path
from tubetune.source import fetch_transcript
from tubetune.source.models import FetchSettings, TranscriptRecord, Video, source_settings

logger = logging.getLogger(__name__)

STORE_FORMAT = 1


@dataclass(frozen=True)
class TranscriptStore:
    """Fetched YouTube transcripts, one JSON file per video and language preference."""

    folder: Path
    languages: tuple[str, ...]

    def path(self, video_id: str) -> Path:
        key = json.dumps({"format": STORE_FORMAT, "video": video_id, "languages": list(self.languages)})
        return self.folder / video_id[:2] / f"{video_id}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def get(self, video: Video) -> TranscriptRecord | None:
        """The stored transcript of ``video`` with its current title, URL and duration, or None."""
        path = self.path(video.id)
        if not path.exists():
            return None
        try:
            record = TranscriptRecord.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, ValidationError) as exc:
            logger.warning("%s: stored transcript %s unreadable (%s); fetching again", video.id, path, exc)
            return None
        return record.model_copy(update={"title": video.title, "url": video.url, "duration": video.duration})

    def put(self, record: TranscriptRecord) -> None:
        if record.status == "ok":
            write_json(self.path(record.video_id), record.model_dump(mode="json"))


def transcripts_shard(
    shard: str,
    videos: Sequence[Mapping[str, Any]],
    source: Mapping[str, Any],
    transcript_files: Mapping[str, str],
    chunk_config: Mapping[str, Any],
    transcripts_dir: str | Path,
    chunks_dir: str | Path,
    store_dir: str | Path | None,
    **youtube_options: Any,
) -> dict[str, int]:
    """Rule ``transcripts``: for each of ``videos`` (entries of ``selected.json``) its transcript record
    into ``transcripts_dir`` and its chunks and chunk status into ``chunks_dir``.

    ``transcript_files`` maps a video id to its file (local source); ``store_dir`` is the transcript
    store of the youtube source (None: fetch every video). ``youtube_options`` go to
    :func:`tubetune.source.fetch_transcript` (tests pass a recorded HTTP session).
    """
    settings = source_settings(FetchSettings, source)
    store = None
    if settings.type == "youtube":
        if store_dir is not None:
            store = TranscriptStore(Path(store_dir), settings.languages)
        if "session" not in youtube_options:  # one HTTP session for the shard's videos
            from tubetune.source.youtube import make_session

            youtube_options = {**youtube_options, "session": make_session(settings)}
    counts = {"videos": 0, "stored": 0, "fetched": 0, "chunks": 0}
    for entry in tqdm(videos, desc=f"transcripts {shard}", unit="video", disable=len(videos) < 2):
        video = Video.model_validate(dict(entry))
        transcript = video_path(transcripts_dir, video.id, ".json")
        record = store.get(video) if store is not None else None
        if record is not None:
            write_json(transcript, record.model_dump(mode="json"))
            counts["stored"] += 1
        else:
            record = fetch_transcript(
                entry, source, transcript_files.get(video.id), transcript, **youtube_options
            )
            counts["fetched"] += 1
            if store is not None:
                store.put(record)
        counts["chunks"] += chunk(
            transcript,
            video_path(chunks_dir, video.id, ".jsonl"),
            video_path(chunks_dir, video.id, ".status.json"),
            chunk_config,
        )
        counts["videos"] += 1
    Path(transcripts_dir).mkdir(parents=True, exist_ok=True)
    Path(chunks_dir).mkdir(parents=True, exist_ok=True)
    logger.info(
        "shard %s: %d videos, %d transcripts read or fetched, %d from the store, %d chunks",
        shard,
        counts["videos"],
        counts["fetched"],
        counts["stored"],
        counts["chunks"],
    )
    return counts
