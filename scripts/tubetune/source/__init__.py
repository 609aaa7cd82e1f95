"""Steps 1-2 of the pipeline: list a channel's videos and fetch one transcript per video.

The two entry points below are what ``scripts/list_videos.py`` and ``scripts/fetch_transcript.py``
call with the rule's params; both take the ``source:`` settings subset the rule passes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tubetune.jsonio import write_json
from tubetune.source.models import Listing, SourceSettings, TranscriptRecord, Video

logger = logging.getLogger(__name__)

__all__ = ["fetch_transcript_step", "list_videos_step"]


def list_videos_step(
    source: Mapping[str, Any], selected_path: str | Path, filtered_path: str | Path
) -> Listing:
    """Checkpoint ``list_videos``: ``selected.json`` and ``filtered.tsv`` from the source settings."""
    from tubetune.source.listing import list_videos

    return list_videos(SourceSettings.from_mapping(source), selected_path, filtered_path)


def fetch_transcript_step(
    video: Mapping[str, Any],
    source: Mapping[str, Any],
    transcript_file: str | Path | None,
    output_path: str | Path,
    **youtube_options: Any,
) -> TranscriptRecord:
    """Rule ``fetch_transcript``: one ``results/transcripts/{video}.json``.

    ``video`` is the video's entry in ``selected.json``; ``transcript_file`` is the local source's
    file for it (None for the youtube source). A video without a usable transcript still gets a
    file, with status "skipped" and the reason, so a rerun does not ask again. ``youtube_options``
    go to :func:`tubetune.source.youtube.fetch_youtube_transcript` (tests pass a recorded session).
    """
    settings = SourceSettings.from_mapping(source)
    entry = Video.model_validate(dict(video))
    if settings.type == "local":
        from tubetune.source.local import load_local_transcript

        record = load_local_transcript(entry, transcript_file)
    else:
        from tubetune.source.youtube import fetch_youtube_transcript

        record = fetch_youtube_transcript(entry, settings, **youtube_options)
    write_json(output_path, record.model_dump(mode="json"))
    return record
