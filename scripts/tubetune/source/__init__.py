"""Steps 1-2 of the pipeline (rules/source.smk): list a channel's videos, fetch one transcript per video.

:func:`list_videos` is the entry point of the rule of the same name; :func:`fetch_transcript` gets one
video's transcript, for every video of a shard in rule ``transcripts`` (:mod:`tubetune.source.shard`).
Each takes the keys of the config section ``source`` its rule passes (or the whole validated section).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tubetune.jsonio import write_json
from tubetune.source.models import (
    FetchSettings,
    Listing,
    ListSettings,
    TranscriptRecord,
    Video,
    source_settings,
)

logger = logging.getLogger(__name__)

__all__ = ["fetch_transcript", "list_videos"]


def list_videos(source: Mapping[str, Any], selected_path: str | Path, filtered_path: str | Path) -> Listing:
    """Checkpoint ``list_videos``: ``selected.json`` and ``filtered.tsv`` from the listing keys of
    ``source``."""
    from tubetune.source.listing import write_listing

    return write_listing(source_settings(ListSettings, source), selected_path, filtered_path)


def fetch_transcript(
    video: Mapping[str, Any],
    source: Mapping[str, Any],
    transcript_file: str | Path | None,
    transcript_path: str | Path,
    **youtube_options: Any,
) -> TranscriptRecord:
    """The transcript of one video into ``transcript_path``.

    ``video`` is the video's entry in ``selected.json``; ``source`` the config section ``source``;
    ``transcript_file`` is the local source's file for the video (None for the youtube source). A video
    without a usable transcript still gets a file, with status "skipped" and the reason, so a rerun does
    not ask again. ``youtube_options`` go to :func:`tubetune.source.youtube.fetch_youtube_transcript`
    (tests pass a recorded HTTP session).
    """
    settings = source_settings(FetchSettings, source)
    entry = Video.model_validate(dict(video))
    if settings.type == "local":
        from tubetune.source.local import load_local_transcript

        record = load_local_transcript(entry, transcript_file)
    else:
        from tubetune.source.youtube import fetch_youtube_transcript

        record = fetch_youtube_transcript(entry, settings, **youtube_options)
    write_json(transcript_path, record.model_dump(mode="json"))
    return record
