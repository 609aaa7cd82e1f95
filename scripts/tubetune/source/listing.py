"""Step 1: list a channel's videos with yt-dlp (or replay a saved listing) and apply the filters.

Both sources go through the same code: a yt-dlp flat listing (``extract_flat='in_playlist'``), live
from YouTube or replayed offline with ``YoutubeDL.process_ie_result(saved_info, download=False)``,
becomes :class:`~tubetune.source.models.Video` entries; the filters then drop Shorts, live streams,
short videos, titles by regex and everything over ``max_videos``, each with a reason in
``filtered.tsv``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yt_dlp
from yt_dlp.utils import DownloadError

from tubetune.errors import ConfigError, InputFileError, TubetuneError, one_line
from tubetune.jsonio import atomic_write_text, write_json
from tubetune.source.local import scan_transcripts_dir, transcripts_folder
from tubetune.source.models import (
    Channel,
    FetchSettings,
    FilteredVideo,
    Listing,
    ListSettings,
    Video,
    is_video_id,
    watch_url,
)

logger = logging.getLogger(__name__)

#: yt-dlp ``live_status`` values of live streams, recorded live streams and scheduled ones.
LIVE_STATUSES = frozenset({"is_live", "was_live", "is_upcoming", "post_live"})
#: YouTube Shorts are at most a minute long.
SHORTS_MAX_S = 61.0
#: Channel tabs yt-dlp lists; a channel URL without one gets ``/videos``.
CHANNEL_TABS = frozenset(
    {"videos", "shorts", "streams", "live", "playlists", "featured", "podcasts", "releases"}
)
_CHANNEL_ID = re.compile(r"UC[A-Za-z0-9_-]{22}")
_HANDLE = re.compile(r"@[\w.-]+")


class YtDlpLogger:
    """Routes yt-dlp's messages into the step's log instead of stdout."""

    def __init__(self, target: logging.Logger) -> None:
        self._log = target

    def debug(self, message: str) -> None:
        # yt-dlp sends its info messages here too ("[download] Downloading item 3 of 40", ...).
        self._log.debug("yt-dlp: %s", message.removeprefix("[debug] "))

    def info(self, message: str) -> None:
        self._log.debug("yt-dlp: %s", message)

    # yt-dlp's warnings ("Retrying (1/4)...") and errors go to the log file only: every failure that
    # matters reaches the user as tubetune's own one-line message.
    def warning(self, message: str) -> None:
        self._log.info("yt-dlp: %s", message)

    def error(self, message: str) -> None:
        self._log.info("yt-dlp: %s", message)


def ydl_params(settings: ListSettings | FetchSettings, **extra: Any) -> dict[str, Any]:
    """yt-dlp options shared by listing and caption fetching: timeouts, retries, cookies, proxy."""
    backoff = settings.backoff_s
    params: dict[str, Any] = {
        "quiet": True,
        "noprogress": True,
        "skip_download": True,
        "logger": YtDlpLogger(logger),
        "socket_timeout": settings.request_timeout_s,
        "retries": settings.max_retries,
        "extractor_retries": settings.max_retries,
        "retry_sleep_functions": {
            "http": lambda n: backoff * 2**n,
            "extractor": lambda n: backoff * 2**n,
        },
    }
    if settings.cookies_file:
        params["cookiefile"] = settings.cookies_file
    if settings.proxy:
        params["proxy"] = settings.proxy
    params.update(extra)
    return params


# --------------------------------------------------------------------------- channel and listing


def channel_url(channel: str) -> str:
    """The URL yt-dlp lists for ``source.channel``: a handle or channel gets its /videos tab."""
    value = channel.strip()
    if _HANDLE.fullmatch(value):
        return f"https://www.youtube.com/{value}/videos"
    if _CHANNEL_ID.fullmatch(value):
        return f"https://www.youtube.com/channel/{value}/videos"
    parsed = urlparse(value if "://" in value else f"https://{value}")
    host = (parsed.hostname or "").lower()
    if not (host == "youtu.be" or host == "youtube.com" or host.endswith(".youtube.com")):
        raise ConfigError(
            f"config error: source.channel '{channel}' is not a YouTube @handle, channel URL or playlist URL"
        )
    if "list" in parse_qs(parsed.query):
        return value if "://" in value else f"https://{value}"
    parts = [part for part in parsed.path.split("/") if part]
    if host == "youtu.be" or (parts and parts[0] in ("watch", "shorts", "live", "embed")):
        raise ConfigError(
            f"config error: source.channel '{channel}' is a video URL: give the channel (@handle, "
            "channel URL) or a playlist URL"
        )
    if parts and (parts[0].startswith("@") or parts[0] in ("channel", "c", "user")):
        base_len = 1 if parts[0].startswith("@") else 2
        base = parts[:base_len]
        tab = parts[base_len:]
        if tab and tab[0] in CHANNEL_TABS:
            return "https://www.youtube.com/" + "/".join(base + tab[:1])
        return "https://www.youtube.com/" + "/".join(base) + "/videos"
    raise ConfigError(
        f"config error: source.channel '{channel}' is not a YouTube @handle, channel URL or playlist URL"
    )


def fetch_listing(settings: ListSettings) -> dict[str, Any]:
    """List the channel online with yt-dlp flat extraction."""
    if not settings.channel:
        raise ConfigError("config error: source.channel must be set when source.type is youtube")
    url = channel_url(settings.channel)
    logger.info("listing %s with yt-dlp (flat)", url)
    params = ydl_params(settings, extract_flat="in_playlist")
    try:
        with yt_dlp.YoutubeDL(params) as ydl:
            info = ydl.extract_info(url, download=False)
    except DownloadError as exc:
        message = ytdlp_message(exc)
        hint = ""
        if "not a bot" in message or "429" in message:
            hint = " (YouTube is blocking this machine: set source.cookies_file or source.proxy and wait)"
        raise TubetuneError(f"listing {url} failed: {message}{hint}") from None
    if not isinstance(info, dict):
        raise TubetuneError(f"listing {url} failed: yt-dlp returned nothing")
    return dict(info)


def replay_listing(path: str | Path, settings: ListSettings) -> dict[str, Any]:
    """Replay a saved ``yt-dlp --flat-playlist -J`` listing through yt-dlp, offline."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"source.listing {path}: cannot read JSON ({one_line(str(exc))})") from None
    if not isinstance(saved, dict) or saved.get("_type") != "playlist" or not isinstance(
        saved.get("entries"), list
    ):
        raise InputFileError(
            f"source.listing {path}: not a yt-dlp flat listing (a JSON object with _type 'playlist' and "
            "'entries'; make one with: yt-dlp --flat-playlist -J URL > listing.json)"
        )
    params = ydl_params(settings, extract_flat="in_playlist")
    try:
        with yt_dlp.YoutubeDL(params) as ydl:
            info = ydl.process_ie_result(saved, download=False)
    except DownloadError as exc:
        message = one_line(str(exc))
        raise InputFileError(f"source.listing {path}: yt-dlp cannot replay it: {message}") from None
    logger.info("replayed %s (%d entries)", path, len(info.get("entries") or []))
    return dict(info)


def channel_of(info: Mapping[str, Any], fallback: str) -> Channel:
    """Channel name, id and URL from a flat listing's top level."""
    name = info.get("channel") or info.get("uploader") or info.get("title") or fallback
    channel_id = info.get("channel_id")
    url = info.get("channel_url") or info.get("uploader_url") or info.get("webpage_url")
    return Channel(name=str(name), id=str(channel_id) if channel_id else None, url=str(url) if url else None)


# --------------------------------------------------------------------------- entries and filters


@dataclass(frozen=True)
class Candidate:
    """A listed video with the fields the filters look at."""

    video: Video
    live_status: str | None = None
    shorts_url: bool = False


def iter_entries(info: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Entries of a listing, nested playlists (channel tabs) flattened."""
    for entry in info.get("entries") or []:
        if not isinstance(entry, Mapping):
            continue
        if isinstance(entry.get("entries"), list):
            yield from iter_entries(entry)
        else:
            yield entry


def candidates_from_info(info: Mapping[str, Any]) -> tuple[list[Candidate], list[FilteredVideo]]:
    """Videos of a listing in listed order; entries that are not videos are returned as filtered."""
    seen: set[str] = set()
    candidates: list[Candidate] = []
    dropped: list[FilteredVideo] = []
    for entry in iter_entries(info):
        video_id = str(entry.get("id") or "")
        title = one_line(str(entry.get("title") or video_id))
        url = str(entry.get("url") or "")
        ie_key = entry.get("ie_key")
        if ie_key not in (None, "Youtube") or not is_video_id(video_id):
            if ie_key in (None, "Youtube"):
                reason = "invalid video id"
            else:
                reason = f"not a video ({ie_key} link {url}: list a /videos tab)"
            dropped.append(FilteredVideo(video_id=video_id, title=title, reason=reason))
            continue
        if video_id in seen:
            logger.info("%s is listed twice; kept once", video_id)
            continue
        seen.add(video_id)
        duration = entry.get("duration")
        video = Video(
            id=video_id,
            title=title,
            duration=float(duration) if isinstance(duration, (int, float)) else None,
            url=watch_url(video_id),
            upload_date=_upload_date(entry),
        )
        live_status = entry.get("live_status")
        candidates.append(
            Candidate(
                video=video,
                live_status=str(live_status) if live_status else None,
                shorts_url="/shorts/" in url,
            )
        )
    return candidates, dropped


def _upload_date(entry: Mapping[str, Any]) -> str | None:
    date = entry.get("upload_date")
    if isinstance(date, str) and date:
        return date
    for key in ("timestamp", "release_timestamp"):
        stamp = entry.get(key)
        if isinstance(stamp, (int, float)):
            return datetime.fromtimestamp(stamp, tz=timezone.utc).strftime("%Y%m%d")
    return None


def compile_title_regex(pattern: str | None, key: str) -> re.Pattern[str] | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"config error: source.{key} is not a valid regular expression ({exc})") from None


def filter_reason(candidate: Candidate, settings: ListSettings) -> str | None:
    """Why a video is dropped by the content filters, or None to keep it (max_videos comes later)."""
    video = candidate.video
    duration = video.duration
    if settings.skip_live and candidate.live_status in LIVE_STATUSES:
        return f"live stream ({candidate.live_status})"
    if settings.skip_shorts:
        if candidate.shorts_url:
            return "YouTube Short (/shorts/ URL)"
        if duration is not None and duration < SHORTS_MAX_S:
            return f"YouTube Short ({duration:g} s < {SHORTS_MAX_S:g} s)"
    if duration is not None and duration < settings.min_duration_s:
        return f"short ({duration:g} s < {settings.min_duration_s:g} s)"
    include = compile_title_regex(settings.title_include, "title_include")
    if include is not None and not include.search(video.title):
        return f"title does not match title_include regex {include.pattern!r}"
    exclude = compile_title_regex(settings.title_exclude, "title_exclude")
    if exclude is not None and exclude.search(video.title):
        return f"title excluded by regex {exclude.pattern!r}"
    return None


def apply_filters(
    candidates: Sequence[Candidate],
    settings: ListSettings,
    has_transcript: Callable[[str], bool] | None = None,
) -> tuple[list[Video], list[FilteredVideo]]:
    """Keep at most ``max_videos`` videos (listed order) that pass the filters; the rest with reasons."""
    compile_title_regex(settings.title_include, "title_include")
    compile_title_regex(settings.title_exclude, "title_exclude")
    kept: list[Video] = []
    filtered: list[FilteredVideo] = []
    for candidate in candidates:
        video = candidate.video
        reason = filter_reason(candidate, settings)
        if reason is None and has_transcript is not None and not has_transcript(video.id):
            reason = "no transcript file"
        if reason is None and len(kept) >= settings.max_videos:
            reason = f"over max_videos ({settings.max_videos})"
        if reason is None:
            kept.append(video)
        else:
            filtered.append(FilteredVideo(video_id=video.id, title=video.title, reason=reason))
    return kept, filtered


# --------------------------------------------------------------------------- the step


def select_videos(settings: ListSettings) -> tuple[Listing, list[FilteredVideo]]:
    """The selected videos and the filtered ones, for either source type."""
    if settings.type == "youtube":
        info = replay_listing(settings.listing, settings) if settings.listing else fetch_listing(settings)
        candidates, dropped = candidates_from_info(info)
        kept, filtered = apply_filters(candidates, settings)
        channel = channel_of(info, settings.channel or "YouTube channel")
        return Listing(channel=channel, source="youtube", videos=kept), dropped + filtered

    folder = transcripts_folder(settings.transcripts_dir)
    files, dropped = scan_transcripts_dir(folder)
    if settings.listing:
        info = replay_listing(settings.listing, settings)
        channel = channel_of(info, settings.channel or folder.name)
        candidates, not_videos = candidates_from_info(info)
        dropped += not_videos
    else:
        channel = Channel(name=settings.channel or folder.name)
        candidates = []
    listed = {candidate.video.id for candidate in candidates}
    for video_id in sorted(set(files) - listed):
        if settings.listing:
            logger.info("%s has a transcript file but is not in the listing: its id is its title", video_id)
        candidates.append(Candidate(video=Video(id=video_id, title=video_id, url=watch_url(video_id))))
    kept, filtered = apply_filters(candidates, settings, has_transcript=files.__contains__)
    return Listing(channel=channel, source="local", videos=kept), dropped + filtered


def write_filtered_tsv(path: str | Path, rows: Sequence[FilteredVideo]) -> None:
    lines = ["video_id\ttitle\treason"]
    lines += [f"{_cell(row.video_id)}\t{_cell(row.title)}\t{_cell(row.reason)}" for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_listing(settings: ListSettings, selected_path: str | Path, filtered_path: str | Path) -> Listing:
    """Step 1: write ``selected.json`` and ``filtered.tsv``; an error if no video is left."""
    listing, filtered = select_videos(settings)
    write_json(selected_path, listing.model_dump(mode="json"))
    write_filtered_tsv(filtered_path, filtered)
    logger.info(
        "channel %s: %d videos selected, %d filtered (see %s)",
        listing.channel.name,
        len(listing.videos),
        len(filtered),
        filtered_path,
    )
    for row in filtered:
        logger.info("filtered %s (%s): %s", row.video_id, row.title, row.reason)
    if not listing.videos:
        raise TubetuneError(
            f"no video left after the filters ({len(filtered)} filtered, see {filtered_path}): "
            "relax source.min_duration_s / title_include / title_exclude or check the source"
        )
    return listing


def ytdlp_message(exc: BaseException) -> str:
    """A yt-dlp error as one short line (no "ERROR:" prefix, no repeated "(caused by ...)" tail)."""
    return one_line(str(exc)).removeprefix("ERROR: ").split(" (caused by ")[0]


def _cell(text: str) -> str:
    return one_line(text.replace("\t", " "))
