"""Source ``local``: transcript files named ``<video id>.json|.srt|.vtt|.txt`` in one folder.

A bad file never stops the run: it becomes a "skipped" transcript whose reason names the file and
what is wrong with it. SRT and WebVTT are read with webvtt-py; YouTube's auto-caption WebVTT (inline
``<c>`` timing tags, every line repeated in the next cue as the captions roll up) is de-duplicated.
"""

from __future__ import annotations

import html
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import webvtt
from pydantic import TypeAdapter, ValidationError
from webvtt.errors import MalformedCaptionError, MalformedFileError

from tubetune.errors import ConfigError, InputFileError
from tubetune.source.models import FilteredVideo, Snippet, TranscriptRecord, Video, is_video_id

logger = logging.getLogger(__name__)

#: File types in order of preference when one video has several files (same order as rules/source.smk).
SUFFIXES = (".json", ".srt", ".vtt", ".txt")
#: Speaking rate used to give a plain-text transcript estimated timings.
WORDS_PER_SECOND = 2.5
#: A plain-text sentence longer than this is cut into pieces of this many words.
MAX_TXT_SNIPPET_WORDS = 20

_SNIPPETS = TypeAdapter(list[Snippet])
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACES = re.compile(r"\s+")
_SRT_TIME = r"\d+:\d{1,2}:\d{1,2}[,.]\d+"
_SRT_TIMING = re.compile(rf"\s*{_SRT_TIME}\s*-->\s*{_SRT_TIME}(\s|$)")


class TranscriptFileError(Exception):
    """A transcript file cannot be used; the message names the file and what is wrong."""


def transcripts_folder(transcripts_dir: str | None) -> Path:
    if not transcripts_dir:
        raise ConfigError("config error: source.transcripts_dir must be set when source.type is local")
    folder = Path(transcripts_dir)
    if not folder.is_dir():
        raise InputFileError(f"source.transcripts_dir '{folder}' is not a folder: create it or fix the path")
    return folder


def scan_transcripts_dir(folder: Path) -> tuple[dict[str, Path], list[FilteredVideo]]:
    """Transcript files by video id, plus the files whose name is not a valid video id."""
    found: dict[str, Path] = {}
    invalid: list[FilteredVideo] = []
    for path in sorted(folder.iterdir(), key=lambda p: (p.stem, _rank(p))):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in SUFFIXES:
            logger.info("ignored %s: not a transcript file (%s)", path, "/".join(SUFFIXES))
            continue
        video_id = path.stem
        if not is_video_id(video_id):
            invalid.append(FilteredVideo(video_id=video_id, title=path.name, reason="invalid video id"))
            continue
        if video_id in found:
            logger.warning("ignored %s: %s is used for video %s", path, found[video_id].name, video_id)
            continue
        found[video_id] = path
    return found, invalid


def _rank(path: Path) -> int:
    suffix = path.suffix.lower()
    return SUFFIXES.index(suffix) if suffix in SUFFIXES else len(SUFFIXES)


def load_local_transcript(video: Video, path: str | Path | None) -> TranscriptRecord:
    """The transcript record of one video from its file; a bad or missing file gives a skipped record."""
    if path is None:
        reason = f"no transcript file {video.id}.* ({'/'.join(SUFFIXES)})"
        logger.warning("%s skipped: %s", video.id, reason)
        return TranscriptRecord.skipped(video, "local", reason)
    try:
        snippets = read_transcript_file(path)
    except TranscriptFileError as exc:
        logger.warning("%s skipped: %s", video.id, exc)
        return TranscriptRecord.skipped(video, "local", str(exc))
    logger.info("%s: %d snippets from %s", video.id, len(snippets), path)
    return TranscriptRecord.ok(video, "local", None, snippets)


def read_transcript_file(path: str | Path) -> list[Snippet]:
    """Snippets of a .json, .srt, .vtt or .txt transcript; :class:`TranscriptFileError` if unusable."""
    file = Path(path)
    name = file.name
    suffix = file.suffix.lower()
    if suffix not in SUFFIXES:
        raise TranscriptFileError(f"{name}: unknown transcript type (use {', '.join(SUFFIXES)})")
    text = _read_text(file)
    if suffix == ".json":
        snippets = parse_json_transcript(text, name)
    elif suffix == ".srt":
        snippets = parse_srt(text, name)
    elif suffix == ".vtt":
        snippets = parse_vtt(text, name)
    else:
        snippets = parse_txt(text, name)
    if not snippets:
        raise TranscriptFileError(f"{name}: empty transcript (no text)")
    return snippets


def _read_text(file: Path) -> str:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise TranscriptFileError(f"{file.name}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TranscriptFileError(
            f"{file.name}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None


def parse_json_transcript(text: str, name: str) -> list[Snippet]:
    """A youtube-transcript-api raw list ``[{text, start, duration}, ...]`` (or ``{"snippets": [...]}``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptFileError(
            f"{name}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if isinstance(data, dict) and "snippets" in data:
        data = data["snippets"]
    if not isinstance(data, list):
        raise TranscriptFileError(
            f"{name}: expected a JSON list of {{text, start, duration}} objects, got {type(data).__name__}"
        )
    try:
        snippets = _SNIPPETS.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"]
        item = f"item {loc[0]}" if loc else "list"
        field = f" field '{loc[1]}'" if len(loc) > 1 else ""
        raise TranscriptFileError(f"{name}: {item}{field}: {first['msg']}") from None
    return [s.model_copy(update={"text": t}) for s in snippets if (t := _clean(s.text))]


def parse_srt(text: str, name: str) -> list[Snippet]:
    # webvtt-py drops an SRT cue with broken timings without a word: check every timing line first.
    for number, line in enumerate(text.splitlines(), start=1):
        if "-->" in line and not _SRT_TIMING.match(line):
            raise TranscriptFileError(f"{name}: line {number}: malformed SRT cue timing {line.strip()!r}")
    return _read_captions(
        lambda: webvtt.from_buffer(io.StringIO(text.lstrip()), format="srt").captions,
        lambda _: f"{name}: malformed SRT (expected a cue number, then 'HH:MM:SS,mmm --> HH:MM:SS,mmm')",
        f"{name}: malformed SRT cue",
    )


def parse_vtt(text: str, name: str) -> list[Snippet]:
    return _read_captions(
        lambda: webvtt.from_string(text.lstrip(), strict=True).captions,
        lambda exc: f"{name}: malformed WebVTT, the first line must be 'WEBVTT' ({exc})",
        f"{name}: malformed WebVTT cue",
    )


def _read_captions(
    read: Callable[[], Iterable[webvtt.Caption]], bad_file: Callable[[Exception], str], bad_cue: str
) -> list[Snippet]:
    """Snippets of the captions ``read()`` parses; a malformed file raises ``bad_file(error)``, a
    malformed cue ``bad_cue: <error>``."""
    try:
        captions = read()
    except MalformedFileError as exc:
        raise TranscriptFileError(bad_file(exc)) from None
    except MalformedCaptionError as exc:
        raise TranscriptFileError(f"{bad_cue}: {exc}") from None
    return captions_to_snippets(captions)


def captions_to_snippets(captions: Iterable[webvtt.Caption]) -> list[Snippet]:
    """One snippet per new caption line.

    Roll-up captions (YouTube's auto-captions) show each line again in the next cue(s); a line that
    was already on screen in the previous cue is not repeated, so every spoken line appears once,
    timed by the cue that introduced it.
    """
    snippets: list[Snippet] = []
    previous: Sequence[str] = ()
    for caption in captions:
        lines = [line for line in (_clean(raw) for raw in caption.text.split("\n")) if line]
        start = caption.start_time.in_milliseconds() / 1000
        end = caption.end_time.in_milliseconds() / 1000
        new = [line for line in lines if line not in previous]
        if new:
            snippets.append(
                Snippet(text=" ".join(new), start=round(start, 3), duration=round(max(end - start, 0), 3))
            )
        previous = lines
    return snippets


def parse_txt(text: str, name: str) -> list[Snippet]:
    """Plain text without timings: timings estimated at :data:`WORDS_PER_SECOND`."""
    pieces: list[list[str]] = []
    for paragraph in text.splitlines():
        for sentence in _SENTENCE_END.split(paragraph.strip()):
            words = sentence.split()
            for first in range(0, len(words), MAX_TXT_SNIPPET_WORDS):
                pieces.append(words[first : first + MAX_TXT_SNIPPET_WORDS])
    snippets: list[Snippet] = []
    spoken = 0
    for words in pieces:
        if not words:
            continue
        snippets.append(
            Snippet(
                text=" ".join(words),
                start=round(spoken / WORDS_PER_SECOND, 3),
                duration=round(len(words) / WORDS_PER_SECOND, 3),
            )
        )
        spoken += len(words)
    if snippets:
        logger.info(
            "%s has no timings: estimated them at %.1f words/s (%d words, %.0f s)",
            name,
            WORDS_PER_SECOND,
            spoken,
            spoken / WORDS_PER_SECOND,
        )
    return snippets


def _clean(text: str) -> str:
    return _SPACES.sub(" ", html.unescape(text)).strip()
