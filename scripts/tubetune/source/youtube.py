"""Step 2, source ``youtube``: one video's transcript with youtube-transcript-api, yt-dlp as fallback.

Failures are sorted into three kinds:

* permanent for the video (transcripts disabled, no transcript in the wanted languages, video
  unavailable, age-restricted, ...): the video gets a "skipped" record with the reason, so a rerun
  does not ask again;
* transient (connection errors, timeouts, HTTP 5xx, an empty body): retried with exponential backoff,
  then the job fails with one line, so a rerun tries again;
* IP blocked (``RequestBlocked`` / ``IpBlocked``, which the library also raises for HTTP 429): retried
  like a transient failure, but after ``ip_block_limit`` blocks in a row the run stops with one
  message telling the user to set a cookies file or a proxy and to wait.

youtube-transcript-api passes no timeout to requests: :class:`YouTubeSession` adds
``request_timeout_s`` to every request and keeps ``request_interval_s`` between requests.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from xml.etree.ElementTree import ParseError

import requests
import yt_dlp
from requests import Response
from youtube_transcript_api import (
    AgeRestricted,
    CouldNotRetrieveTranscript,
    FailedToCreateConsentCookie,
    InvalidVideoId,
    NoTranscriptFound,
    NotTranslatable,
    PoTokenRequired,
    RequestBlocked,
    TranscriptList,
    TranscriptsDisabled,
    TranslationLanguageNotAvailable,
    VideoUnavailable,
    VideoUnplayable,
    YouTubeDataUnparsable,
    YouTubeRequestFailed,
    YouTubeTranscriptApi,
)
from yt_dlp.networking.exceptions import HTTPError as YtDlpHTTPError
from yt_dlp.networking.exceptions import RequestError as YtDlpRequestError
from yt_dlp.networking.exceptions import TransportError as YtDlpTransportError
from yt_dlp.utils import DownloadError, ExtractorError

from tubetune.errors import ConfigError, TubetuneError, one_line
from tubetune.source.listing import ydl_params, ytdlp_message
from tubetune.source.local import TranscriptFileError, parse_vtt
from tubetune.source.models import FetchSettings, Snippet, TranscriptKind, TranscriptRecord, Video

logger = logging.getLogger(__name__)

T = TypeVar("T")
#: permanent: no transcript for this video, worth a yt-dlp try; final: the video itself is gone;
#: transient: retry with backoff; blocked: YouTube blocks this machine.
FailureKind = Literal["permanent", "final", "transient", "blocked"]

#: Caption formats asked from yt-dlp, best first.
CAPTION_FORMATS = ("json3", "vtt")


class YouTubeBlockedError(TubetuneError):
    """YouTube answered with IP blocks ``ip_block_limit`` times in a row: stop the run."""


class TransientFetchError(TubetuneError):
    """A transient failure outlived the retries: the job fails, a rerun tries again."""

    def __init__(self, what: str, tries: int, reason: str) -> None:
        super().__init__(f"{what} failed after {tries} tries ({reason})")
        self.what = what
        self.tries = tries
        self.reason = reason


class FetchFailedError(TubetuneError):
    """Both youtube-transcript-api and yt-dlp failed transiently: the job fails with one line."""


class PermanentFailure(Exception):
    """The video has no usable transcript; ``fallback`` says whether yt-dlp is worth a try."""

    def __init__(self, reason: str, fallback: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fallback = fallback


@dataclass(frozen=True)
class Fetched:
    snippets: list[Snippet]
    language: str | None
    kind: TranscriptKind


# --------------------------------------------------------------------------- HTTP session


class YouTubeSession(requests.Session):
    """A requests session with a timeout on every request and a pause between requests."""

    def __init__(
        self,
        timeout_s: float,
        interval_s: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self._sleep = sleep
        self._clock = clock
        self._last_request: float | None = None

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Response:
        if kwargs.get("timeout") is None and len(args) < 7:  # timeout is request()'s 9th parameter
            kwargs["timeout"] = self.timeout_s
        self._pace()
        try:
            return super().request(method, url, *args, **kwargs)
        finally:
            self._last_request = self._clock()

    def _pace(self) -> None:
        if self._last_request is None or self.interval_s <= 0:
            return
        wait = self.interval_s - (self._clock() - self._last_request)
        if wait > 0:
            self._sleep(wait)


def make_session(settings: FetchSettings, sleep: Callable[[float], None] = time.sleep) -> YouTubeSession:
    """The session youtube-transcript-api uses: timeout, pacing, cookies and proxy from the settings."""
    session = YouTubeSession(settings.request_timeout_s, settings.request_interval_s, sleep=sleep)
    if settings.cookies_file:
        jar = http.cookiejar.MozillaCookieJar(settings.cookies_file)
        try:
            jar.load(ignore_discard=True, ignore_expires=True)
        except (OSError, http.cookiejar.LoadError) as exc:
            raise ConfigError(
                f"config error: source.cookies_file '{settings.cookies_file}' cannot be read ({exc}); "
                "export a Netscape-format cookies.txt from a browser signed in to YouTube"
            ) from None
        for cookie in jar:
            session.cookies.set_cookie(cookie)
    if settings.proxy:
        session.proxies.update({"http": settings.proxy, "https": settings.proxy})
    return session


# --------------------------------------------------------------------------- failure classification


ErrorTypes = type[BaseException] | tuple[type[BaseException], ...]
Reason = str | Callable[[Any], str]
# youtube-transcript-api / requests failures after blocks and HTTP errors, tested in this order (a class
# before its base class): the kind and the reason (text, or made from the exception).
TRANSCRIPT_API_FAILURES: tuple[tuple[ErrorTypes, FailureKind, Reason], ...] = (
    (
        (requests.JSONDecodeError, json.JSONDecodeError),
        "transient",
        "empty or broken player response (not JSON)",
    ),
    (requests.Timeout, "transient", "request timed out"),
    (requests.ConnectionError, "transient", "connection error"),
    (requests.RequestException, "transient", lambda exc: f"request failed ({type(exc).__name__})"),
    (ParseError, "transient", "empty or broken caption body (XML parse error)"),
    (TranscriptsDisabled, "permanent", "transcripts are disabled for this video"),
    (VideoUnavailable, "final", "video unavailable"),
    (InvalidVideoId, "final", "invalid video id"),
    (AgeRestricted, "permanent", "age-restricted video (needs a signed-in session)"),
    (PoTokenRequired, "permanent", "YouTube requires a PO token for these captions"),
    (VideoUnplayable, "permanent", lambda e: "video unplayable: " + one_line(e.reason or "no reason given")),
    ((NotTranslatable, TranslationLanguageNotAvailable), "permanent", "requested translation not available"),
    (FailedToCreateConsentCookie, "permanent", "could not accept YouTube's cookie consent page"),
    (YouTubeDataUnparsable, "permanent", "watch page not parsable by youtube-transcript-api"),
    (CouldNotRetrieveTranscript, "permanent", lambda exc: f"youtube-transcript-api: {type(exc).__name__}"),
)


def classify_transcript_api_error(exc: BaseException) -> tuple[FailureKind, str]:
    """Sort a youtube-transcript-api / requests failure into permanent, transient or blocked."""
    if isinstance(exc, RequestBlocked):  # includes IpBlocked, raised for HTTP 429 too
        return "blocked", "YouTube blocked the request (IP blocked or HTTP 429)"
    if isinstance(exc, YouTubeRequestFailed):
        status = _http_status(exc)
        if status is None or status >= 500 or status == 408:
            return "transient", f"HTTP {status or '?'} from YouTube"
        return "permanent", f"HTTP {status} from YouTube"
    for types, kind, reason in TRANSCRIPT_API_FAILURES:
        if isinstance(exc, types):
            return kind, reason if isinstance(reason, str) else reason(exc)
    # Anything else (a KeyError on a changed page layout, ...) is the library's trouble: try yt-dlp.
    return "permanent", f"youtube-transcript-api failed: {type(exc).__name__}: {one_line(str(exc), 200)}"


def _http_status(exc: YouTubeRequestFailed) -> int | None:
    context = exc.__context__
    response = getattr(context, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    head = exc.reason.split(" ", 1)[0]
    return int(head) if head.isdigit() else None


def classify_ytdlp_error(exc: BaseException) -> tuple[FailureKind, str]:
    """Sort a yt-dlp failure into permanent, transient or blocked."""
    original: BaseException = exc
    if isinstance(exc, DownloadError) and exc.exc_info and exc.exc_info[1] is not None:
        original = exc.exc_info[1]
    message = ytdlp_message(getattr(original, "orig_msg", None) or original)
    network = original if isinstance(original, YtDlpRequestError) else getattr(original, "cause", None)
    if isinstance(network, YtDlpHTTPError):
        if network.status == 429:
            return "blocked", "YouTube answered HTTP 429 (too many requests)"
        if network.status >= 500:
            return "transient", f"HTTP {network.status} from YouTube"
        return "permanent", f"yt-dlp: HTTP {network.status} from YouTube"
    if isinstance(network, YtDlpTransportError):
        return "transient", f"network error ({ytdlp_message(network)})"
    if "not a bot" in message:
        return "blocked", "YouTube asks to sign in to confirm this is not a bot"
    if isinstance(original, ExtractorError) and original.expected:
        return "permanent", f"yt-dlp: {message}"
    if isinstance(original, (ValueError, KeyError)):
        return "transient", f"unreadable captions ({one_line(str(original))})"
    return "transient", message


def blocked_message(video_id: str, blocks: int) -> str:
    return (
        f"YouTube is blocking requests from this machine ({blocks} IP blocks in a row while fetching "
        f"{video_id}): set source.cookies_file (a cookies.txt from a browser signed in to YouTube) or "
        "source.proxy, wait a few hours, then rerun; transcripts already fetched are kept"
    )


class RetryPolicy:
    """Retries transient failures with exponential backoff and stops after repeated IP blocks.

    One policy serves one video (one job): the IP-block count runs across youtube-transcript-api and
    the yt-dlp fallback and is reset by any answer that is not a block.
    """

    def __init__(self, settings: FetchSettings, video_id: str, sleep: Callable[[float], None]) -> None:
        self.settings = settings
        self.video_id = video_id
        self.sleep = sleep
        self.blocks_in_a_row = 0

    def run(
        self,
        what: str,
        call: Callable[[], T],
        classify: Callable[[BaseException], tuple[FailureKind, str]],
    ) -> T:
        """``call()`` until it succeeds; a permanent failure is raised as :class:`PermanentFailure`."""
        retries = 0
        waits = 0
        while True:
            try:
                result = call()
            except PermanentFailure:
                self.blocks_in_a_row = 0
                raise
            except Exception as exc:
                kind, reason = classify(exc)
                logger.debug("%s %s failed", what, self.video_id, exc_info=True)
                if kind in ("permanent", "final"):
                    self.blocks_in_a_row = 0
                    raise PermanentFailure(reason, fallback=kind == "permanent") from exc
                if kind == "blocked":
                    self.blocks_in_a_row += 1
                    if self.blocks_in_a_row >= self.settings.ip_block_limit:
                        message = blocked_message(self.video_id, self.blocks_in_a_row)
                        raise YouTubeBlockedError(message) from None
                else:
                    self.blocks_in_a_row = 0
                    if retries >= self.settings.max_retries:
                        raise TransientFetchError(what, retries + 1, reason) from None
                    retries += 1
                delay = self.settings.backoff_s * 2**waits
                waits += 1
                logger.warning("%s %s: %s; retrying in %.1f s", what, self.video_id, reason, delay)
                self.sleep(delay)
            else:
                self.blocks_in_a_row = 0
                return result


# --------------------------------------------------------------------------- youtube-transcript-api


def fetch_with_transcript_api(api: YouTubeTranscriptApi, video_id: str, languages: Sequence[str]) -> Fetched:
    """List the video's transcripts, pick by language (manual before auto-generated) and fetch it."""
    transcripts = api.list(video_id)
    try:
        transcript = transcripts.find_transcript(languages)
    except NoTranscriptFound:
        raise PermanentFailure(
            f"no transcript in {', '.join(languages)} (available: {_available(transcripts)})", fallback=True
        ) from None
    fetched = transcript.fetch()
    snippets = [
        Snippet(text=text, start=round(s.start, 3), duration=round(s.duration, 3))
        for s in fetched.snippets
        if (text := one_line(s.text))
    ]
    if not snippets:
        raise PermanentFailure(f"empty transcript ({transcript.language_code})", fallback=True)
    kind: TranscriptKind = "auto" if fetched.is_generated else "manual"
    return Fetched(snippets=snippets, language=fetched.language_code, kind=kind)


def _available(transcripts: TranscriptList) -> str:
    codes = [f"{t.language_code}{' (auto)' if t.is_generated else ''}" for t in transcripts]
    return ", ".join(codes) or "none"


# --------------------------------------------------------------------------- yt-dlp fallback


@dataclass(frozen=True)
class CaptionTrack:
    language: str
    generated: bool
    ext: str
    url: str


def pick_caption_track(info: Mapping[str, Any], languages: Sequence[str]) -> CaptionTrack | None:
    """The best caption track of a yt-dlp info dict: languages in order, manual before automatic."""
    groups = (("subtitles", False), ("automatic_captions", True))
    for language in languages:
        for field, generated in groups:
            tracks = info.get(field) or {}
            for key in _language_keys(language, tracks, generated):
                formats = {fmt.get("ext"): fmt for fmt in tracks[key] if isinstance(fmt, Mapping)}
                for ext in CAPTION_FORMATS:
                    fmt = formats.get(ext)
                    if fmt and fmt.get("url"):
                        return CaptionTrack(language=key, generated=generated, ext=ext, url=str(fmt["url"]))
    return None


def _language_keys(language: str, tracks: Mapping[str, Any], generated: bool) -> list[str]:
    exact = [f"{language}-orig", language] if generated else [language]
    keys = [key for key in exact if key in tracks]
    keys += sorted(key for key in tracks if key.startswith(f"{language}-") and key not in keys)
    return keys


def parse_json3(text: str, name: str) -> list[Snippet]:
    """YouTube's json3 timed text: ``{"events": [{"tStartMs", "dDurationMs", "segs": [{"utf8"}]}]}``."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{name}: json3 captions are not a JSON object")
    snippets: list[Snippet] = []
    for event in data.get("events") or []:
        segments = event.get("segs") if isinstance(event, dict) else None
        if not segments:
            continue
        words = one_line("".join(str(seg.get("utf8", "")) for seg in segments if isinstance(seg, dict)))
        if not words:
            continue
        start = float(event.get("tStartMs", 0)) / 1000
        duration = float(event.get("dDurationMs", 0)) / 1000
        snippets.append(Snippet(text=words, start=round(start, 3), duration=round(duration, 3)))
    return snippets


def captions_from_info(ydl: yt_dlp.YoutubeDL, info: Mapping[str, Any], languages: Sequence[str]) -> Fetched:
    """Download and parse the best caption track listed in a yt-dlp info dict (through yt-dlp's urlopen)."""
    track = pick_caption_track(info, languages)
    if track is None:
        raise PermanentFailure(f"yt-dlp: no captions in {', '.join(languages)}", fallback=False)
    with ydl.urlopen(track.url) as response:
        body = response.read().decode("utf-8")
    name = f"{info.get('id', 'video')}.{track.language}.{track.ext}"
    if not body.strip():
        raise ValueError(f"{name}: empty caption body")
    if track.ext == "json3":
        snippets = parse_json3(body, name)
    else:
        try:
            snippets = parse_vtt(body, name)
        except TranscriptFileError as exc:
            raise ValueError(str(exc)) from None
    if not snippets:
        raise PermanentFailure(f"yt-dlp: empty captions ({track.language})", fallback=False)
    return Fetched(snippets=snippets, language=track.language, kind="ytdlp")


InfoExtractor = Callable[[yt_dlp.YoutubeDL, str], Mapping[str, Any]]


def extract_video_info(ydl: yt_dlp.YoutubeDL, url: str) -> Mapping[str, Any]:
    """The video's info dict, unprocessed (no format selection: only captions are needed)."""
    info = ydl.extract_info(url, download=False, process=False)
    if not isinstance(info, Mapping):
        raise ExtractorError("yt-dlp returned no video information", expected=True)
    return info


def fetch_with_ytdlp(
    video: Video, settings: FetchSettings, extract: InfoExtractor = extract_video_info
) -> Fetched:
    params = ydl_params(settings, sleep_interval_requests=settings.request_interval_s)
    with yt_dlp.YoutubeDL(params) as ydl:
        info = extract(ydl, video.url)
        return captions_from_info(ydl, info, settings.languages)


# --------------------------------------------------------------------------- the whole fetch


def fetch_youtube_transcript(
    video: Video,
    settings: FetchSettings,
    *,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
    ytdlp_extract: InfoExtractor = extract_video_info,
) -> TranscriptRecord:
    """The transcript record of one video: youtube-transcript-api first, yt-dlp captions second.

    Raises :class:`YouTubeBlockedError` after repeated IP blocks and :class:`FetchFailedError`
    when transient failures outlive the retries (of youtube-transcript-api, then of yt-dlp).
    """
    http = session if session is not None else make_session(settings, sleep=sleep)
    api = YouTubeTranscriptApi(http_client=http)
    policy = RetryPolicy(settings, video.id, sleep)
    transient: TransientFetchError | None = None
    try:
        fetched = policy.run(
            "youtube-transcript-api",
            lambda: fetch_with_transcript_api(api, video.id, settings.languages),
            classify_transcript_api_error,
        )
    except PermanentFailure as failure:
        if not failure.fallback:
            return _skipped(video, failure.reason, "auto")
        first_reason = failure.reason
    except TransientFetchError as exc:
        first_reason = str(exc)
        transient = exc
    else:
        return _ok(video, fetched)

    logger.info("%s: %s; trying yt-dlp captions", video.id, first_reason)
    try:
        fetched = policy.run(
            "yt-dlp captions",
            lambda: fetch_with_ytdlp(video, settings, ytdlp_extract),
            classify_ytdlp_error,
        )
    except PermanentFailure as failure:
        if transient is None:
            return _skipped(video, f"{first_reason}; {failure.reason}", "ytdlp")
        raise FetchFailedError(_fetch_failed(video, f"{transient}; {failure.reason}")) from None
    except TransientFetchError as exc:
        raise FetchFailedError(_fetch_failed(video, f"{first_reason}; {exc}")) from None
    return _ok(video, fetched)


def _fetch_failed(video: Video, details: str) -> str:
    return f"could not fetch the transcript of {video.id} now: {details}; rerun later to try again"


def _ok(video: Video, fetched: Fetched) -> TranscriptRecord:
    logger.info(
        "%s: %d snippets (%s, %s)", video.id, len(fetched.snippets), fetched.language, fetched.kind
    )
    return TranscriptRecord.ok(video, fetched.kind, fetched.language, fetched.snippets)


def _skipped(video: Video, reason: str, last_tried: TranscriptKind) -> TranscriptRecord:
    """A skipped record; its kind names the last method tried ("auto": youtube-transcript-api)."""
    logger.warning("%s skipped: %s", video.id, reason)
    return TranscriptRecord.skipped(video, last_tried, reason)
