"""Source ``youtube``: listing replayed through real yt-dlp, transcripts through real
youtube-transcript-api on a real requests session whose transport serves recorded YouTube answers,
and the yt-dlp caption fallback through real yt-dlp against a caption server on 127.0.0.1. No network.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import yt_dlp
from requests.adapters import HTTPAdapter
from urllib3 import HTTPResponse
from yt_dlp.networking.exceptions import HTTPError as YtDlpHTTPError
from yt_dlp.utils import ExtractorError

from tubetune.config import section_config
from tubetune.errors import ConfigError, InputFileError, TubetuneError
from tubetune.logs import run_step
from tubetune.source import fetch_transcript, list_videos
from tubetune.source.listing import channel_url, select_videos
from tubetune.source.models import FetchSettings, ListSettings, Video, source_settings, watch_url
from tubetune.source.shard import transcripts_shard
from tubetune.source.youtube import (
    FetchFailedError,
    YouTubeBlockedError,
    YouTubeSession,
    captions_from_info,
    classify_ytdlp_error,
    fetch_youtube_transcript,
    make_session,
    parse_json3,
    pick_caption_track,
)

FIXTURES = Path(__file__).parent / "fixtures" / "youtube"
LISTING = FIXTURES / "channel_flat.json"
VIDEO_ID = "Ab12Cd34Ef5"
VIDEO = Video(id=VIDEO_ID, title="Proofing Baskets Compared", duration=734.0, url=watch_url(VIDEO_ID))
TIMEOUT = 7.5
BACKOFF = 0.25


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection except to 127.0.0.1 fails the test."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to reach the network: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "getaddrinfo", _local_getaddrinfo(socket.getaddrinfo))


def _local_getaddrinfo(real: Any) -> Any:
    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"test tried to resolve {host}")
        return real(host, *args, **kwargs)

    return lookup


def listing_settings(**values: Any) -> ListSettings:
    """The listing settings of a source section: ``values`` and the schema's defaults."""
    return source_settings(ListSettings, section_config("source", values))


def settings(**overrides: Any) -> FetchSettings:
    values: dict[str, Any] = {
        "type": "youtube",
        "languages": ["en"],
        "request_timeout_s": TIMEOUT,
        "max_retries": 2,
        "backoff_s": BACKOFF,
        "request_interval_s": 0,
        "ip_block_limit": 2,
    }
    values.update(overrides)
    return source_settings(FetchSettings, section_config("source", values))


# --------------------------------------------------------------------------- recorded YouTube


@dataclass
class Reply:
    """One recorded answer: a fixture file (or raw body) with a status, or a transport error."""

    fixture: str | None = None
    status: int = 200
    body: bytes | None = None
    error: type[requests.RequestException] | None = None


@dataclass
class Call:
    endpoint: str
    method: str
    url: str
    timeout: Any
    body: bytes | None
    headers: Mapping[str, str]
    proxies: Mapping[str, str]


REASONS = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json; charset=UTF-8",
                 ".xml": "text/xml; charset=UTF-8"}


class RecordedYouTube(HTTPAdapter):
    """Transport adapter answering the three endpoints youtube-transcript-api 1.2.5 calls.

    ``watch`` (GET /watch?v=ID: the HTML with INNERTUBE_API_KEY), ``player`` (POST
    /youtubei/v1/player?key=...: the innertube JSON with captions.playerCaptionsTracklistRenderer)
    and ``timedtext:<lang>`` / ``timedtext:<lang>:asr`` (GET /api/timedtext: the transcript XML).
    Replies are served in order; an unexpected request fails the test.
    """

    def __init__(self, routes: Mapping[str, list[Reply]]) -> None:
        super().__init__()
        self.routes = {key: list(replies) for key, replies in routes.items()}
        self.calls: list[Call] = []

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        endpoint = endpoint_of(str(request.url))
        body = request.body.encode() if isinstance(request.body, str) else request.body
        self.calls.append(Call(endpoint, str(request.method), str(request.url), timeout, body,
                               dict(request.headers), dict(proxies or {})))
        replies = self.routes.get(endpoint)
        if not replies:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        reply = replies.pop(0)
        if reply.error is not None:
            raise reply.error(f"recorded {reply.error.__name__}", request=request)
        content = reply.body if reply.body is not None else (FIXTURES / str(reply.fixture)).read_bytes()
        suffix = Path(str(reply.fixture)).suffix
        raw = HTTPResponse(
            body=io.BytesIO(content),
            status=reply.status,
            reason=REASONS.get(reply.status, "Error"),
            headers={"Content-Type": CONTENT_TYPES.get(suffix, "text/html; charset=utf-8"),
                     "Content-Length": str(len(content))},
            preload_content=False,
            decode_content=False,
        )
        return self.build_response(request, raw)

    def count(self, endpoint: str) -> int:
        return sum(call.endpoint == endpoint for call in self.calls)


def endpoint_of(url: str) -> str:
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    if parsed.path == "/watch":
        return "watch"
    if parsed.path == "/youtubei/v1/player":
        return "player"
    if parsed.path == "/api/timedtext":
        return f"timedtext:{query['lang'][0]}" + (":asr" if query.get("kind") == ["asr"] else "")
    return f"other:{parsed.path}"


def recorded_session(config: FetchSettings, routes: Mapping[str, list[Reply]],
                     sleeps: list[float] | None = None) -> tuple[YouTubeSession, RecordedYouTube]:
    """The production session (timeout, pacing, cookies, proxy) with the recorded transport mounted."""
    session = make_session(config, sleep=(sleeps.append if sleeps is not None else _no_sleep))
    adapter = RecordedYouTube(routes)
    session.mount("https://", adapter)
    return session, adapter


def _no_sleep(seconds: float) -> None:
    raise AssertionError(f"unexpected pause of {seconds} s")


def ok_routes(player: str = "player_ok.json", track: str = "timedtext:en") -> dict[str, list[Reply]]:
    return {"watch": [Reply("watch.html")], "player": [Reply(player)], track: [Reply("timedtext_en.xml")]}


def no_ytdlp(ydl: yt_dlp.YoutubeDL, url: str) -> Mapping[str, Any]:
    raise AssertionError("the yt-dlp fallback should not run")


def ytdlp_without_captions(ydl: yt_dlp.YoutubeDL, url: str) -> Mapping[str, Any]:
    return {"id": VIDEO_ID, "title": VIDEO.title, "subtitles": {}, "automatic_captions": {}}


def fetch(config: FetchSettings, routes: Mapping[str, list[Reply]], *, ytdlp: Any = no_ytdlp,
          ) -> tuple[Any, RecordedYouTube, list[float]]:
    sleeps: list[float] = []
    session, adapter = recorded_session(config, routes)
    record = fetch_youtube_transcript(VIDEO, config, session=session, sleep=sleeps.append,
                                      ytdlp_extract=ytdlp)
    return record, adapter, sleeps


# --------------------------------------------------------------------------- transcripts: success


def test_manual_english_transcript_with_timeout_on_every_request() -> None:
    config = settings()
    record, adapter, sleeps = fetch(config, ok_routes())

    assert record.status == "ok" and record.reason is None
    assert (record.kind, record.language) == ("manual", "en")
    assert [s.text for s in record.snippets] == [
        "Welcome back to the test kitchen.",
        "Today we're comparing four proofing baskets: cane, wood pulp, linen & plastic.",
        "The dough is the same 75% hydration country loaf every time.",
        "Let's see which one gives the best crust pattern.",
    ]
    assert [(s.start, s.duration) for s in record.snippets][:2] == [(0.12, 3.48), (3.6, 4.2)]
    assert sleeps == []
    assert [c.endpoint for c in adapter.calls] == ["watch", "player", "timedtext:en"]
    assert all(call.timeout == TIMEOUT for call in adapter.calls)
    player = adapter.calls[1]
    assert player.method == "POST" and "key=AIzaSyTubetuneFixtureKey0000000000000000" in player.url
    assert json.loads(player.body or b"{}")["videoId"] == VIDEO_ID


def test_auto_generated_transcript_when_no_manual_one() -> None:
    record, _, _ = fetch(settings(), {
        "watch": [Reply("watch.html")], "player": [Reply("player_auto_only.json")],
        "timedtext:en:asr": [Reply("timedtext_en_auto.xml")]})
    assert (record.status, record.kind, record.language) == ("ok", "auto", "en")
    assert record.snippets[1].text == "today we're comparing four proofing"


def test_language_preference_order_is_kept() -> None:
    record, _, _ = fetch(settings(languages=["de", "en"]), ok_routes(track="timedtext:de"))
    assert (record.kind, record.language) == ("manual", "de")


def test_explicit_timeout_is_not_overridden_and_pause_between_requests() -> None:
    now = [100.0]
    sleeps: list[float] = []
    session = YouTubeSession(3.0, interval_s=1.5, sleep=sleeps.append, clock=lambda: now[0])
    adapter = RecordedYouTube({"watch": [Reply("watch.html"), Reply("watch.html"), Reply("watch.html")]})
    session.mount("https://", adapter)
    session.get(watch_url(VIDEO_ID))
    now[0] += 0.5
    session.get(watch_url(VIDEO_ID), timeout=9)
    now[0] += 4.0
    session.get(watch_url(VIDEO_ID))
    assert [c.timeout for c in adapter.calls] == [3.0, 9, 3.0]
    assert sleeps == [1.0]


def test_session_sends_cookies_and_uses_proxy(tmp_path: Path) -> None:
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n"
                       ".youtube.com\tTRUE\t/\tTRUE\t2000000000\tSID\tfixture-session\n", encoding="utf-8")
    config = settings(cookies_file=str(cookies), proxy="http://127.0.0.1:3128")
    session, adapter = recorded_session(config, {"watch": [Reply("watch.html")]})
    session.get(watch_url(VIDEO_ID))
    assert "SID=fixture-session" in adapter.calls[0].headers["Cookie"]
    assert adapter.calls[0].proxies.get("https") == "http://127.0.0.1:3128"


def test_unreadable_cookies_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "cookies.txt"
    bad.write_text("this is not a cookies file\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"source\.cookies_file"):
        make_session(settings(cookies_file=str(bad)))


# --------------------------------------------------------------------------- permanent failures


def test_transcripts_disabled_is_skipped_not_retried(tmp_path: Path) -> None:
    config = settings()
    session, adapter = recorded_session(config, {
        "watch": [Reply("watch.html")], "player": [Reply("player_transcripts_disabled.json")]})
    out = tmp_path / "transcripts" / f"{VIDEO_ID}.json"
    record = fetch_transcript(VIDEO.model_dump(), dataclasses.asdict(config), None, out, session=session,
                                   sleep=_no_sleep, ytdlp_extract=ytdlp_without_captions)
    assert record.status == "skipped"
    assert record.reason == "transcripts are disabled for this video; yt-dlp: no captions in en"
    assert adapter.count("player") == 1
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == {"video_id": VIDEO_ID, "title": VIDEO.title, "url": VIDEO.url, "duration": 734.0,
                       "status": "skipped", "reason": record.reason, "language": None, "kind": "ytdlp",
                       "snippets": []}


def test_no_transcript_in_the_wanted_language_names_what_exists() -> None:
    record, _, sleeps = fetch(settings(languages=["fr"]), {
        "watch": [Reply("watch.html")], "player": [Reply("player_ok.json")]}, ytdlp=ytdlp_without_captions)
    assert record.status == "skipped"
    assert record.reason == "no transcript in fr (available: de, en, en (auto)); yt-dlp: no captions in fr"
    assert sleeps == []


def test_unavailable_video_is_skipped_without_fallback() -> None:
    record, _, _ = fetch(settings(), {
        "watch": [Reply("watch.html")], "player": [Reply("player_video_unavailable.json")]})
    assert (record.status, record.reason, record.kind) == ("skipped", "video unavailable", "auto")


def test_age_restricted_video_tries_ytdlp_then_is_skipped() -> None:
    record, _, _ = fetch(settings(), {
        "watch": [Reply("watch.html")], "player": [Reply("player_age_restricted.json")]},
        ytdlp=ytdlp_without_captions)
    assert record.status == "skipped"
    assert record.reason is not None and record.reason.startswith("age-restricted video")


def test_transcript_without_text_is_not_ok() -> None:
    record, _, _ = fetch(settings(), {
        "watch": [Reply("watch.html")], "player": [Reply("player_ok.json")],
        "timedtext:en": [Reply("timedtext_no_text.xml")]}, ytdlp=ytdlp_without_captions)
    assert record.status == "skipped" and record.reason is not None
    assert record.reason.startswith("empty transcript (en)")


# --------------------------------------------------------------------------- transient failures


def test_429_then_success() -> None:
    record, adapter, sleeps = fetch(settings(), {
        "watch": [Reply("watch_recaptcha.html", status=429), Reply("watch.html")],
        "player": [Reply("player_ok.json")], "timedtext:en": [Reply("timedtext_en.xml")]})
    assert record.status == "ok"
    assert adapter.count("watch") == 2
    assert sleeps == [BACKOFF]


@pytest.mark.parametrize(
    "routes",
    [
        # empty caption body: the library's XML parser raises a raw ParseError
        {"watch": [Reply("watch.html")] * 2, "player": [Reply("player_ok.json")] * 2,
         "timedtext:en": [Reply(body=b""), Reply("timedtext_en.xml")]},
        # empty innertube body: not JSON
        {"watch": [Reply("watch.html")] * 2, "player": [Reply(body=b""), Reply("player_ok.json")],
         "timedtext:en": [Reply("timedtext_en.xml")]},
        {"watch": [Reply("watch.html")] * 2,
         "player": [Reply(body=b"{}", status=503), Reply("player_ok.json")],
         "timedtext:en": [Reply("timedtext_en.xml")]},
        {"watch": [Reply(error=requests.ReadTimeout), Reply("watch.html")],
         "player": [Reply("player_ok.json")], "timedtext:en": [Reply("timedtext_en.xml")]},
        {"watch": [Reply(error=requests.ConnectionError), Reply("watch.html")],
         "player": [Reply("player_ok.json")], "timedtext:en": [Reply("timedtext_en.xml")]},
    ],
    ids=["empty-caption-body", "empty-player-body", "http-503", "read-timeout", "connection-error"],
)
def test_transient_failure_is_retried_then_succeeds(routes: dict[str, list[Reply]]) -> None:
    record, _, sleeps = fetch(settings(), copy.deepcopy(routes))
    assert record.status == "ok" and record.kind == "manual"
    assert sleeps == [BACKOFF]


def test_transient_failure_outliving_retries_fails_the_job(tmp_path: Path) -> None:
    config = settings(max_retries=2)
    tries = config.max_retries + 1
    session, adapter = recorded_session(config, {
        "watch": [Reply("watch.html")] * tries, "player": [Reply("player_ok.json")] * tries,
        "timedtext:en": [Reply(body=b"")] * tries})
    sleeps: list[float] = []
    out = tmp_path / f"{VIDEO_ID}.json"
    with pytest.raises(FetchFailedError) as failure:
        fetch_transcript(VIDEO.model_dump(), dataclasses.asdict(config), None, out, session=session,
                              sleep=sleeps.append, ytdlp_extract=ytdlp_without_captions)
    assert str(failure.value) == (
        f"could not fetch the transcript of {VIDEO_ID} now: youtube-transcript-api failed after 3 tries "
        "(empty or broken caption body (XML parse error)); yt-dlp: no captions in en; "
        "rerun later to try again")
    assert sleeps == [BACKOFF, 2 * BACKOFF]
    assert adapter.count("timedtext:en") == tries
    assert not out.exists()  # no record: a rerun tries again


# --------------------------------------------------------------------------- IP blocks


@pytest.mark.parametrize(
    "routes",
    [
        {"watch": [Reply("watch_recaptcha.html")] * 3},
        {"watch": [Reply("watch.html")] * 3, "player": [Reply("player_request_blocked.json")] * 3},
        {"watch": [Reply("watch_recaptcha.html", status=429)] * 3},
    ],
    ids=["recaptcha-page", "not-a-bot", "http-429"],
)
def test_ip_block_stops_after_the_limit(routes: dict[str, list[Reply]]) -> None:
    config = settings(ip_block_limit=3, max_retries=0)
    sleeps: list[float] = []
    session, adapter = recorded_session(config, copy.deepcopy(routes))
    with pytest.raises(YouTubeBlockedError) as blocked:
        fetch_youtube_transcript(VIDEO, config, session=session, sleep=sleeps.append, ytdlp_extract=no_ytdlp)
    assert adapter.count("watch") == 3
    assert sleeps == [BACKOFF, 2 * BACKOFF]
    message = str(blocked.value)
    assert "source.cookies_file" in message and "source.proxy" in message and "\n" not in message


def test_ip_block_is_one_clear_log_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = settings(ip_block_limit=2)
    session, _ = recorded_session(config, {"watch": [Reply("watch_recaptcha.html")] * 2})
    log = tmp_path / "fetch.log"
    with pytest.raises(SystemExit) as exit_info:
        run_step(log, lambda: fetch_transcript(
            VIDEO.model_dump(), dataclasses.asdict(config), None, tmp_path / "out.json", session=session,
            sleep=lambda s: None, ytdlp_extract=no_ytdlp))
    assert exit_info.value.code == 1
    errors = [line for line in log.read_text(encoding="utf-8").splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "YouTube is blocking requests from this machine" in errors[0]
    assert "Traceback" not in capsys.readouterr().err
    logging.getLogger().handlers.clear()


# --------------------------------------------------------------------------- yt-dlp fallback


class CaptionServer:
    """A caption server on 127.0.0.1 answering /api/timedtext?lang=..&fmt=.. from a table."""

    def __init__(self) -> None:
        self.replies: dict[tuple[str, str], list[tuple[int, bytes]]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                key = (query["lang"][0], query["fmt"][0])
                server.requests.append(self.path)
                queue = server.replies.get(key) or [(404, b"")]
                status, body = queue.pop(0) if len(queue) > 1 else queue[0]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def info(self) -> dict[str, Any]:
        text = (FIXTURES / "ytdlp_info.json").read_text(encoding="utf-8").replace("{captions}", self.url)
        info: dict[str, Any] = json.loads(text)
        return info

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def caption_server() -> Iterator[CaptionServer]:
    server = CaptionServer()
    yield server
    server.close()


def test_pick_caption_track_prefers_language_then_manual() -> None:
    info = json.loads((FIXTURES / "ytdlp_info.json").read_text(encoding="utf-8"))
    manual = pick_caption_track(info, ["en"])
    assert manual is not None and (manual.language, manual.generated, manual.ext) == ("en-GB", False, "json3")
    auto = pick_caption_track(info, ["fr", "en"])
    assert auto is not None and (auto.language, auto.generated) == ("fr", True)
    del info["subtitles"]["en-GB"]
    orig = pick_caption_track(info, ["en"])
    assert orig is not None and (orig.language, orig.generated) == ("en-orig", True)
    assert pick_caption_track(info, ["es"]) is None


def test_json3_parser_joins_segments_and_drops_empty_events() -> None:
    snippets = parse_json3((FIXTURES / "captions_en_gb.json3").read_text(encoding="utf-8"), "x.json3")
    assert [(s.text, s.start, s.duration) for s in snippets] == [
        ("Welcome back to the test kitchen.", 0.12, 3.48),
        ("Today we're comparing four proofing baskets.", 3.6, 4.2),
        ("Same dough, every time.", 8.4, 5.1),
    ]


def test_ytdlp_fallback_when_transcripts_api_finds_nothing(caption_server: CaptionServer) -> None:
    caption_server.replies[("en-GB", "json3")] = [(200, (FIXTURES / "captions_en_gb.json3").read_bytes())]
    record, _, _ = fetch(settings(), {
        "watch": [Reply("watch.html")], "player": [Reply("player_transcripts_disabled.json")]},
        ytdlp=lambda ydl, url: caption_server.info())
    assert (record.status, record.kind, record.language) == ("ok", "ytdlp", "en-GB")
    assert record.snippets[0].text == "Welcome back to the test kitchen."
    assert len(caption_server.requests) == 1 and "fmt=json3" in caption_server.requests[0]


def test_ytdlp_vtt_captions_are_deduplicated(caption_server: CaptionServer) -> None:
    info = caption_server.info()
    info["subtitles"] = {}
    for key in info["automatic_captions"]:
        info["automatic_captions"][key] = [f for f in info["automatic_captions"][key] if f["ext"] == "vtt"]
    caption_server.replies[("en", "vtt")] = [(200, (FIXTURES / "captions_en_auto.vtt").read_bytes())]
    with yt_dlp.YoutubeDL({"quiet": True}) as ydl:
        fetched = captions_from_info(ydl, info, ["en"])
    assert fetched.language == "en-orig"
    assert [s.text for s in fetched.snippets] == [
        "welcome back to the test kitchen",
        "today we're comparing four proofing",
        "baskets cane wood pulp linen and plastic",
    ]


def test_ytdlp_transient_caption_failure_is_retried(caption_server: CaptionServer) -> None:
    body = (FIXTURES / "captions_en_gb.json3").read_bytes()
    caption_server.replies[("en-GB", "json3")] = [(503, b""), (200, b""), (200, body)]
    record, _, sleeps = fetch(settings(max_retries=3), {
        "watch": [Reply("watch.html")], "player": [Reply("player_transcripts_disabled.json")]},
        ytdlp=lambda ydl, url: caption_server.info())
    assert record.status == "ok" and record.kind == "ytdlp"
    assert sleeps == [BACKOFF, 2 * BACKOFF]


def test_transient_transcript_api_failure_falls_back_to_ytdlp(caption_server: CaptionServer) -> None:
    caption_server.replies[("en-GB", "json3")] = [(200, (FIXTURES / "captions_en_gb.json3").read_bytes())]
    record, _, sleeps = fetch(settings(max_retries=1), {
        "watch": [Reply(error=requests.ConnectionError)] * 2}, ytdlp=lambda ydl, url: caption_server.info())
    assert record.status == "ok" and record.kind == "ytdlp"
    assert sleeps == [BACKOFF]


def test_ytdlp_errors_are_classified() -> None:
    class FakeResponse:
        status = 429
        reason = "Too Many Requests"

    assert classify_ytdlp_error(YtDlpHTTPError(FakeResponse()))[0] == "blocked"
    FakeResponse.status = 502
    assert classify_ytdlp_error(YtDlpHTTPError(FakeResponse()))[0] == "transient"
    private = "Private video. Sign in if you've been granted access"
    assert classify_ytdlp_error(ExtractorError(private, expected=True)) == ("permanent", f"yt-dlp: {private}")
    bot = ExtractorError("Sign in to confirm you\u2019re not a bot. Use --cookies", expected=True)
    assert classify_ytdlp_error(bot)[0] == "blocked"


# --------------------------------------------------------------------------- listing


def test_channel_urls() -> None:
    assert channel_url("@crumblab") == "https://www.youtube.com/@crumblab/videos"
    assert channel_url("https://www.youtube.com/@crumblab") == "https://www.youtube.com/@crumblab/videos"
    assert channel_url("https://www.youtube.com/@crumblab/streams") == "https://www.youtube.com/@crumblab/streams"
    assert channel_url("youtube.com/channel/UCcrumb1ab5ampleChanne1Q/featured?x=1") == (
        "https://www.youtube.com/channel/UCcrumb1ab5ampleChanne1Q/featured")
    assert channel_url("UCcrumb1ab5ampleChanne1Q") == "https://www.youtube.com/channel/UCcrumb1ab5ampleChanne1Q/videos"
    playlist = "https://www.youtube.com/playlist?list=PLtubetuneFixture"
    assert channel_url(playlist) == playlist
    with pytest.raises(ConfigError, match="video URL"):
        channel_url("https://www.youtube.com/watch?v=Ab12Cd34Ef5")
    with pytest.raises(ConfigError, match="not a YouTube"):
        channel_url("crumblab")


def test_listing_replayed_through_ytdlp_with_default_filters(tmp_path: Path) -> None:
    selected, filtered = tmp_path / "selected.json", tmp_path / "filtered.tsv"
    source = section_config(
        "source", {"type": "youtube", "channel": "@tubetunetest", "listing": str(LISTING)}
    )
    listing = list_videos(source, selected, filtered)
    data = json.loads(selected.read_text(encoding="utf-8"))
    assert data["source"] == "youtube"
    assert data["channel"] == {"name": "Tubetune Test Kitchen", "id": "UCtubetuneTestChanne1xyz",
                               "url": "https://www.youtube.com/channel/UCtubetuneTestChanne1xyz"}
    assert [v["id"] for v in data["videos"]] == [
        "Ab12Cd34Ef5", "Trailer0006", "NoDuration7", "Crust000008", "Crumb000009"]
    assert data["videos"][0] == {"id": "Ab12Cd34Ef5", "title": "Proofing Baskets Compared", "duration": 734.0,
                                 "url": "https://www.youtube.com/watch?v=Ab12Cd34Ef5", "upload_date": None}
    assert data["videos"][2]["duration"] is None
    assert len(listing.videos) == 5
    rows = filtered.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "video_id\ttitle\treason"
    assert rows[1:] == [
        "Sh0rtVid001\tBanneton in 40 seconds #shorts\tYouTube Short (/shorts/ URL)",
        "LiveStrm002\tLIVE: Friday Q&A bake\tlive stream (was_live)",
        "Upc0ming003\tPremiere: Rye Week\tlive stream (is_upcoming)",
        "Sh0rtByDur4\tFlour dust trick\tYouTube Short (55 s < 61 s)",
        "Brief000005\tQuick update from the kitchen\tshort (95 s < 120 s)",
    ]


def reasons(**source: Any) -> tuple[list[str], dict[str, str]]:
    config = listing_settings(type="youtube", listing=str(LISTING), **source)
    listing, filtered = select_videos(config)
    return [v.id for v in listing.videos], {row.video_id: row.reason for row in filtered}


def test_title_regex_filters() -> None:
    kept, dropped = reasons(title_exclude="(?i)trailer")
    assert "Trailer0006" not in kept
    assert dropped["Trailer0006"] == "title excluded by regex '(?i)trailer'"
    kept, dropped = reasons(title_include="(?i)crust|crumb")
    assert kept == ["Crust000008", "Crumb000009"]
    assert dropped["Ab12Cd34Ef5"] == "title does not match title_include regex '(?i)crust|crumb'"


def test_max_videos_and_filters_switched_off() -> None:
    kept, dropped = reasons(max_videos=2)
    assert kept == ["Ab12Cd34Ef5", "Trailer0006"]
    assert dropped["Crust000008"] == "over max_videos (2)"
    kept, dropped = reasons(skip_shorts=False, skip_live=False, min_duration_s=0)
    assert len(kept) == 10 and dropped == {}
    kept, dropped = reasons(skip_shorts=False, min_duration_s=50)
    assert "Sh0rtVid001" not in kept and dropped["Sh0rtVid001"] == "short (45 s < 50 s)"
    assert "Sh0rtByDur4" in kept


def test_channel_root_listing_of_tabs_is_not_taken_for_videos(tmp_path: Path) -> None:
    """``yt-dlp --flat-playlist -J https://www.youtube.com/@x`` lists the channel's tabs, not videos."""
    tab = json.loads(LISTING.read_text(encoding="utf-8"))
    root = {key: value for key, value in tab.items() if key != "entries"}
    root.update({"title": "Tubetune Test Kitchen", "webpage_url_basename": "@tubetunetest", "entries": [
        {"_type": "url", "ie_key": "YoutubeTab", "id": "UCtubetuneTestChanne1xyz",
         "url": "https://www.youtube.com/@tubetunetest/videos", "title": "Tubetune Test Kitchen - Videos"},
        {"_type": "url", "ie_key": "YoutubeTab", "id": "UCtubetuneTestChanne1xyz",
         "url": "https://www.youtube.com/@tubetunetest/streams", "title": "Tubetune Test Kitchen - Live"},
    ]})
    path = tmp_path / "root.json"
    path.write_text(json.dumps(root), encoding="utf-8")
    listing, filtered = select_videos(listing_settings(type="youtube", listing=str(path)))
    assert listing.videos == []
    assert [row.reason for row in filtered] == [
        "not a video (YoutubeTab link https://www.youtube.com/@tubetunetest/videos: list a /videos tab)",
        "not a video (YoutubeTab link https://www.youtube.com/@tubetunetest/streams: list a /videos tab)",
    ]


def test_bad_listing_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "listing.json"
    path.write_text('{"entries": [', encoding="utf-8")
    with pytest.raises(InputFileError, match="cannot read JSON"):
        select_videos(listing_settings(type="youtube", listing=str(path)))
    path.write_text('{"id": "Ab12Cd34Ef5", "title": "one video"}', encoding="utf-8")
    with pytest.raises(InputFileError, match="not a yt-dlp flat listing"):
        select_videos(listing_settings(type="youtube", listing=str(path)))


def test_every_video_filtered_is_an_error(tmp_path: Path) -> None:
    values = {"type": "youtube", "listing": str(LISTING), "title_include": "^nothing$"}
    with pytest.raises(TubetuneError, match="no video left after the filters"):
        list_videos(section_config("source", values), tmp_path / "s.json", tmp_path / "f.tsv")


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"source\.max_videos"):
        listing_settings(max_videos=0)
    with pytest.raises(ConfigError, match=r"source\.title_exclude: '\(unclosed' is not a 'regex'"):
        reasons(title_exclude="(unclosed")
    checked = listing_settings(type="youtube", listing=str(LISTING))
    unchecked = dataclasses.replace(checked, title_exclude="(unclosed")
    with pytest.raises(ConfigError, match=r"source\.title_exclude is not a valid regular expression"):
        select_videos(unchecked)
    with pytest.raises(ConfigError, match=r"source\.channel must be set"):
        select_videos(listing_settings(type="youtube"))


def test_both_fetchers_failing_transiently_is_one_line(caption_server: CaptionServer) -> None:
    caption_server.replies[("en-GB", "json3")] = [(503, b"")]
    with pytest.raises(FetchFailedError) as failure:
        fetch(settings(max_retries=1), {"watch": [Reply(error=requests.ConnectionError)] * 2},
              ytdlp=lambda ydl, url: caption_server.info())
    assert str(failure.value) == (
        f"could not fetch the transcript of {VIDEO_ID} now: youtube-transcript-api failed after 2 tries "
        "(connection error); yt-dlp captions failed after 2 tries (HTTP 503 from YouTube); "
        "rerun later to try again")


# --------------------------------------------------------------------------- the transcript store


def test_a_shard_rerun_reads_fetched_transcripts_from_the_store(tmp_path: Path) -> None:
    """Rule transcripts with the youtube source: a fetched transcript is kept in the store and read back
    (with the listing's current title) when the shard runs again; other languages are fetched anew."""
    config = settings()
    source = dataclasses.asdict(config)
    store = tmp_path / "store"
    chunk_config = section_config("chunk", {"min_words": 1})

    def run(name: str, routes: Mapping[str, list[Reply]], video: Video, **changes: Any) -> RecordedYouTube:
        session, adapter = recorded_session(config, routes)
        transcripts_shard(
            "s0", [video.model_dump()], {**source, **changes}, {}, chunk_config,
            tmp_path / name / "transcripts", tmp_path / name / "chunks", store,
            session=session, sleep=_no_sleep, ytdlp_extract=no_ytdlp,
        )
        return adapter

    first = run("first", ok_routes(), VIDEO)
    assert [c.endpoint for c in first.calls] == ["watch", "player", "timedtext:en"]
    fetched = json.loads((tmp_path / "first" / "transcripts" / f"{VIDEO_ID}.json").read_text())
    assert fetched["status"] == "ok" and len(list(store.rglob("*.json"))) == 1

    renamed = VIDEO.model_copy(update={"title": "Proofing Baskets, Compared Again"})
    second = run("second", {}, renamed)  # any request to YouTube would fail: nothing is recorded
    assert second.calls == []
    again = json.loads((tmp_path / "second" / "transcripts" / f"{VIDEO_ID}.json").read_text())
    assert again == {**fetched, "title": renamed.title}
    chunks = (tmp_path / "second" / "chunks" / f"{VIDEO_ID}.jsonl").read_text()
    assert chunks == (tmp_path / "first" / "chunks" / f"{VIDEO_ID}.jsonl").read_text().replace(
        VIDEO.title, renamed.title
    )

    other_language = run("third", ok_routes(track="timedtext:de"), VIDEO, languages=["de", "en"])
    assert [c.endpoint for c in other_language.calls] == ["watch", "player", "timedtext:de"]
    assert len(list(store.rglob("*.json"))) == 2


def test_a_skipped_transcript_is_not_stored(tmp_path: Path) -> None:
    config = settings()
    session, adapter = recorded_session(config, {
        "watch": [Reply("watch.html")], "player": [Reply("player_transcripts_disabled.json")]})
    assert not adapter.calls
    transcripts_shard(
        "s0", [VIDEO.model_dump()], dataclasses.asdict(config), {}, section_config("chunk", {}),
        tmp_path / "transcripts", tmp_path / "chunks", tmp_path / "store",
        session=session, sleep=_no_sleep, ytdlp_extract=ytdlp_without_captions,
    )
    status = json.loads((tmp_path / "chunks" / f"{VIDEO_ID}.status.json").read_text())
    assert status["status"] == "skipped" and status["stage"] == "transcript"
    assert not list((tmp_path / "store").rglob("*.json"))
