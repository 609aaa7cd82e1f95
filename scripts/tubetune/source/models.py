"""Settings and records of steps 1-2 (list videos, fetch transcripts).

The JSON files written from these models are a contract read by later steps:
``results/videos/selected.json`` (:class:`Listing`), ``results/videos/filtered.tsv``
(:class:`FilteredVideo` rows) and ``results/transcripts/{video}.json`` (:class:`TranscriptRecord`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tubetune.errors import ConfigError

VIDEO_ID = re.compile(r"[A-Za-z0-9_-]{11}")
WATCH_URL = "https://www.youtube.com/watch?v={video_id}"

SourceType = Literal["local", "youtube"]
TranscriptKind = Literal["manual", "auto", "ytdlp", "local"]


def is_video_id(value: str) -> bool:
    return VIDEO_ID.fullmatch(value) is not None


def watch_url(video_id: str) -> str:
    return WATCH_URL.format(video_id=video_id)


class SourceSettings(BaseModel):
    """The ``source:`` section of the config (see config.schema.yaml for every key).

    A rule passes only the keys it uses; the others keep these defaults, which mirror the schema.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: SourceType = "local"
    channel: str | None = None
    listing: str | None = None
    transcripts_dir: str | None = None
    languages: tuple[str, ...] = ("en",)
    max_videos: int = Field(default=50, ge=1)
    skip_shorts: bool = True
    skip_live: bool = True
    min_duration_s: float = Field(default=120, ge=0)
    title_include: str | None = None
    title_exclude: str | None = None
    request_timeout_s: float = Field(default=20, gt=0)
    max_retries: int = Field(default=4, ge=0)
    backoff_s: float = Field(default=2.0, ge=0)
    request_interval_s: float = Field(default=1.0, ge=0)
    ip_block_limit: int = Field(default=2, ge=1)
    cookies_file: str | None = None
    proxy: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SourceSettings:
        """Build from a (possibly partial) ``source:`` mapping; a bad value is one ConfigError line."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"config error: source.{where}: {first['msg']}") from None


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
        return cls(
            video_id=video.id,
            title=video.title,
            url=video.url,
            duration=video.duration,
            status="skipped",
            reason=reason,
            kind=kind,
        )

    @classmethod
    def ok(
        cls, video: Video, kind: TranscriptKind, language: str | None, snippets: list[Snippet]
    ) -> TranscriptRecord:
        return cls(
            video_id=video.id,
            title=video.title,
            url=video.url,
            duration=video.duration,
            status="ok",
            language=language,
            kind=kind,
            snippets=snippets,
        )
