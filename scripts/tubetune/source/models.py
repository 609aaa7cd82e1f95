"""Settings and records of steps 1-2 (list videos, fetch transcripts).

The JSON files written from these models are a contract read by later steps:
``results/videos/selected.json`` (:class:`Listing`), ``results/videos/filtered.tsv``
(:class:`FilteredVideo` rows) and ``results/transcripts/{video}.json`` (:class:`TranscriptRecord`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tubetune.settings import settings_from

VIDEO_ID = re.compile(r"[A-Za-z0-9_-]{11}")
WATCH_URL = "https://www.youtube.com/watch?v={video_id}"

SettingsT = TypeVar("SettingsT", "ListSettings", "FetchSettings")
SourceType = Literal["local", "youtube"]
TranscriptKind = Literal["manual", "auto", "ytdlp", "local"]


def is_video_id(value: str) -> bool:
    return VIDEO_ID.fullmatch(value) is not None


def watch_url(video_id: str) -> str:
    return WATCH_URL.format(video_id=video_id)


@dataclass(frozen=True)
class ListSettings:
    """The keys of the config section ``source`` that listing the videos uses (rule list_videos).

    Built with ``settings_from(ListSettings, values, "source")``; config.schema.yaml holds the defaults.
    """

    type: SourceType
    channel: str | None
    listing: str | None
    transcripts_dir: str | None
    max_videos: int
    skip_shorts: bool
    skip_live: bool
    min_duration_s: float
    title_include: str | None
    title_exclude: str | None
    request_timeout_s: float
    max_retries: int
    backoff_s: float
    cookies_file: str | None
    proxy: str | None


@dataclass(frozen=True)
class FetchSettings:
    """The keys of the config section ``source`` that fetching a transcript uses (rule transcripts).

    Built with ``settings_from(FetchSettings, values, "source")``; config.schema.yaml holds the defaults.
    """

    type: SourceType
    languages: tuple[str, ...]
    request_timeout_s: float
    max_retries: int
    backoff_s: float
    request_interval_s: float
    ip_block_limit: int
    cookies_file: str | None
    proxy: str | None


def source_settings(cls: type[SettingsT], source: Mapping[str, Any]) -> SettingsT:
    """``cls`` (:class:`ListSettings` or :class:`FetchSettings`) from its keys of a validated ``source``
    section: the subset a rule passes, or the whole section."""
    names = {field.name for field in fields(cls)}
    return settings_from(cls, {key: value for key, value in source.items() if key in names}, "source")


class Channel(BaseModel):
    name: str
    id: str | None = None
    url: str | None = None


class Video(BaseModel):
    """One entry of ``selected.json``: what later steps know about a video."""

    id: str
    title: str
    duration: float | None = None
    url: str
    upload_date: str | None = None


class Listing(BaseModel):
    """``results/videos/selected.json``."""

    channel: Channel
    source: SourceType
    videos: list[Video]


class FilteredVideo(BaseModel):
    """One row of ``results/videos/filtered.tsv``."""

    video_id: str
    title: str
    reason: str


class Snippet(BaseModel):
    """One timed piece of a transcript (the youtube-transcript-api raw form)."""

    model_config = ConfigDict(extra="ignore")

    text: str
    start: float = Field(ge=0)
    duration: float = Field(ge=0)


class TranscriptRecord(BaseModel):
    """``results/transcripts/{video}.json``; a skipped video has status "skipped" and a reason."""

    video_id: str
    title: str
    url: str
    duration: float | None
    status: Literal["ok", "skipped"]
    reason: str | None = None
    language: str | None = None
    kind: TranscriptKind
    snippets: list[Snippet] = Field(default_factory=list)

    @classmethod
    def skipped(cls, video: Video, kind: TranscriptKind, reason: str) -> TranscriptRecord:
        return cls.of_video(video, kind, status="skipped", reason=reason)

    @classmethod
    def ok(
        cls, video: Video, kind: TranscriptKind, language: str | None, snippets: list[Snippet]
    ) -> TranscriptRecord:
        return cls.of_video(video, kind, status="ok", language=language, snippets=snippets)

    @classmethod
    def of_video(cls, video: Video, kind: TranscriptKind, **fields: Any) -> TranscriptRecord:
        """A record of ``video`` (its id, title, url and duration) with the other ``fields``."""
        return cls(
            video_id=video.id, title=video.title, url=video.url, duration=video.duration, kind=kind, **fields
        )
