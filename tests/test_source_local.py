"""Source ``local``: transcript files (.json/.srt/.vtt/.txt), good and bad, and the local listing."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from tubetune.config import section_config
from tubetune.errors import ConfigError, InputFileError
from tubetune.source import fetch_transcript, list_videos
from tubetune.source.listing import select_videos
from tubetune.source.local import (
    TranscriptFileError,
    load_local_transcript,
    read_transcript_file,
    scan_transcripts_dir,
)
from tubetune.source.models import ListSettings, Video, source_settings, watch_url

FIXTURES = Path(__file__).parent / "fixtures" / "local"
LISTING = Path(__file__).parent / "fixtures" / "youtube" / "channel_flat.json"


def texts_and_times(name: str) -> list[tuple[str, float, float]]:
    return [(s.text, s.start, s.duration) for s in read_transcript_file(FIXTURES / name)]


# --------------------------------------------------------------------------- parsers


def test_json_raw_list() -> None:
    assert texts_and_times("raw_list.json") == [
        ("[Music]", 0.0, 2.1),
        ("hi friends welcome back to the kitchen", 2.1, 3.4),
        ("today it's all about levain", 5.5, 2.9),
        ("feed it at a one to five to five ratio", 8.9, 4.0),
    ]


def test_json_transcript_record_is_accepted() -> None:
    assert texts_and_times("wrapper.json") == [("a transcript copied from results/transcripts", 1.0, 2.0)]


def test_srt_with_crlf_tags_and_entities() -> None:
    assert texts_and_times("manual.srt") == [
        ("Shaping a boule starts with good surface tension.", 1.0, 3.25),
        ("Use very little flour & a bench scraper.", 4.25, 3.55),
        ("Then let it rest.", 7.8, 2.2),
    ]


def test_srt_with_byte_order_mark() -> None:
    assert texts_and_times("bom.srt") == [("A file with a UTF-8 BOM.", 0.0, 2.0)]


def test_vtt_with_voice_settings_and_short_timestamps() -> None:
    assert texts_and_times("manual.vtt") == [
        ("Bulk fermentation is about the dough,", 0.5, 2.5),
        ("not the clock.", 3.0, 3.5),
        ("Watch for a domed surface and bubbles.", 6.5, 2.5),
    ]


def test_youtube_auto_caption_vtt_is_deduplicated() -> None:
    """Inline <c> word timings are stripped and each rolled-up line appears once, at its first cue."""
    assert texts_and_times("youtube_auto.vtt") == [
        ("welcome back to the test kitchen", 0.16, 2.79),
        ("today we're comparing four proofing", 2.96, 3.91),
        ("baskets cane wood pulp linen and plastic", 6.88, 3.4),
    ]


def test_plain_text_gets_estimated_timings(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tubetune.source.local"):
        snippets = texts_and_times("plain.txt")
    assert snippets == [
        ("Cold retard slows fermentation and builds flavor.", 0.0, 2.8),  # 7 words at 2.5 words/s
        ("Put the shaped loaf in the fridge overnight.", 2.8, 3.2),
        ("The poke test tells you when it is ready: the dent should spring back slowly and not all the way",
         6.0, 8.0),
    ]
    assert "plain.txt has no timings: estimated them at 2.5 words/s (35 words, 14 s)" in caplog.text


def test_long_plain_text_sentence_is_cut() -> None:
    from tubetune.source.local import parse_txt

    snippets = parse_txt(" ".join(f"w{i}" for i in range(45)), "run-on.txt")
    assert [len(s.text.split()) for s in snippets] == [20, 20, 5]
    assert [s.start for s in snippets] == [0.0, 8.0, 16.0]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("malformed.json", "malformed JSON at line 4 column 1: Expecting ',' delimiter"),
        ("missing_start.json", "item 1 field 'start': Field required"),
        ("not_a_list.json", "expected a JSON list of {text, start, duration} objects, got dict"),
        ("empty_list.json", "empty transcript (no text)"),
        ("malformed.srt", "malformed SRT (expected a cue number, then 'HH:MM:SS,mmm --> HH:MM:SS,mmm')"),
        ("bad_timestamp.srt", "line 6: malformed SRT cue timing '00:00:99,xyz --> 00:00:07,800'"),
        ("no_header.vtt", "malformed WebVTT, the first line must be 'WEBVTT' (Invalid format)"),
        ("bad_timestamp.vtt",
         "malformed WebVTT cue: Invalid cue block ['00:00:0x.000 --> 00:00:06.500', 'broken']"),
        ("empty.vtt", "empty transcript (no text)"),
        ("blank.txt", "empty transcript (no text)"),
        ("latin1.txt", "not UTF-8 text (byte 0xe8 at offset 2); save it as UTF-8"),
    ],
)
def test_bad_file_is_a_precise_reason(name: str, reason: str) -> None:
    with pytest.raises(TranscriptFileError) as failure:
        read_transcript_file(FIXTURES / name)
    assert str(failure.value) == f"{name}: {reason}"


# --------------------------------------------------------------------------- the fetch step


def video(video_id: str = "Lo1Json0001") -> Video:
    return Video(id=video_id, title="A title", duration=600.0, url=watch_url(video_id))


@pytest.mark.parametrize("fixture", ["raw_list.json", "manual.srt", "youtube_auto.vtt", "plain.txt"])
def test_fetch_step_writes_an_ok_record(tmp_path: Path, fixture: str) -> None:
    source = tmp_path / f"Lo1Json0001{Path(fixture).suffix}"
    shutil.copy(FIXTURES / fixture, source)
    out = tmp_path / "results" / "Lo1Json0001.json"
    fetch_transcript(video().model_dump(), section_config("source", {"type": "local"}), str(source), out)
    record = json.loads(out.read_text(encoding="utf-8"))
    assert set(record) == {"video_id", "title", "url", "duration", "status", "reason", "language", "kind",
                           "snippets"}
    assert (record["status"], record["kind"], record["reason"]) == ("ok", "local", None)
    assert record["url"] == "https://www.youtube.com/watch?v=Lo1Json0001"
    assert record["snippets"] and set(record["snippets"][0]) == {"text", "start", "duration"}


def test_fetch_step_records_a_bad_file_as_skipped(tmp_path: Path) -> None:
    source = tmp_path / "Lo1Json0001.txt"
    shutil.copy(FIXTURES / "latin1.txt", source)
    out = tmp_path / "Lo1Json0001.json"
    source_section = section_config("source", {"type": "local"})
    record = fetch_transcript(video().model_dump(), source_section, str(source), out)
    assert record.status == "skipped"
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["status"] == "skipped" and written["snippets"] == []
    assert written["reason"] == "Lo1Json0001.txt: not UTF-8 text (byte 0xe8 at offset 2); save it as UTF-8"


def test_missing_file_is_skipped() -> None:
    record = load_local_transcript(video(), None)
    assert record.status == "skipped"
    assert record.reason == "no transcript file Lo1Json0001.* (.json/.srt/.vtt/.txt)"


# --------------------------------------------------------------------------- listing a folder


def make_folder(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "transcripts"
    folder.mkdir()
    for name, fixture in files.items():
        shutil.copy(FIXTURES / fixture, folder / name)
    return folder


def local(folder: Path, **extra: Any) -> ListSettings:
    section = section_config("source", {"type": "local", "transcripts_dir": str(folder), **extra})
    return source_settings(ListSettings, section)


def test_folder_without_listing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = make_folder(tmp_path, {
        "Vid0000000B.json": "raw_list.json",
        "Vid0000000A.srt": "manual.srt",
        "Vid0000000A.vtt": "manual.vtt",  # same video: the .srt is used (json, srt, vtt, txt)
        "Vid0000000C.txt": "plain.txt",
        "Vid0000000D.vtt": "no_header.vtt",  # listed; the fetch step records it as skipped
        "not-a-video-id.json": "raw_list.json",
        "notes.md": "plain.txt",
    })
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    files, invalid = scan_transcripts_dir(folder)
    assert [(row.video_id, row.reason) for row in invalid] == [("not-a-video-id", "invalid video id")]
    assert {vid: path.name for vid, path in files.items()} == {
        "Vid0000000A": "Vid0000000A.srt", "Vid0000000B": "Vid0000000B.json",
        "Vid0000000C": "Vid0000000C.txt", "Vid0000000D": "Vid0000000D.vtt"}
    selected, filtered = tmp_path / "selected.json", tmp_path / "filtered.tsv"
    with caplog.at_level(logging.INFO):
        source = {"type": "local", "transcripts_dir": str(folder), "channel": "@crumblab"}
        list_videos(section_config("source", source), selected, filtered)
    data = json.loads(selected.read_text(encoding="utf-8"))
    assert data["channel"] == {"name": "@crumblab", "id": None, "url": None}
    assert data["source"] == "local"
    assert data["videos"][0] == {"id": "Vid0000000A", "title": "Vid0000000A", "duration": None,
                                 "url": "https://www.youtube.com/watch?v=Vid0000000A", "upload_date": None}
    assert [v["id"] for v in data["videos"]] == ["Vid0000000A", "Vid0000000B", "Vid0000000C", "Vid0000000D"]
    assert filtered.read_text(encoding="utf-8") == (
        "video_id\ttitle\treason\nnot-a-video-id\tnot-a-video-id.json\tinvalid video id\n")
    assert "Vid0000000A.vtt: Vid0000000A.srt is used" in caplog.text
    assert "notes.md: not a transcript file" in caplog.text


def test_folder_with_listing_gets_titles_and_filters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = make_folder(tmp_path, {
        "Ab12Cd34Ef5.json": "raw_list.json",      # listed, kept
        "Sh0rtVid001.vtt": "youtube_auto.vtt",    # listed Short: filtered as a Short
        "Crust000008.srt": "manual.srt",          # listed, kept
        "Unl1sted000.txt": "plain.txt",           # not in the listing: kept, id as title
    })
    with caplog.at_level(logging.INFO):
        listing, filtered = select_videos(local(folder, listing=str(LISTING)))
    assert listing.channel.name == "Tubetune Test Kitchen"
    assert [(v.id, v.title, v.duration) for v in listing.videos] == [
        ("Ab12Cd34Ef5", "Proofing Baskets Compared", 734.0),
        ("Crust000008", "Why is my crust so thick?", 900.0),
        ("Unl1sted000", "Unl1sted000", None),
    ]
    reasons = {row.video_id: row.reason for row in filtered}
    assert reasons["Sh0rtVid001"] == "YouTube Short (/shorts/ URL)"
    assert reasons["LiveStrm002"] == "live stream (was_live)"
    assert reasons["Trailer0006"] == "no transcript file"
    assert reasons["Crumb000009"] == "no transcript file"
    assert "Unl1sted000 has a transcript file but is not in the listing" in caplog.text


def test_max_videos_counts_only_videos_with_transcripts(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, {"Crust000008.srt": "manual.srt", "Crumb000009.srt": "manual.srt"})
    listing, filtered = select_videos(local(folder, listing=str(LISTING), max_videos=1))
    assert [v.id for v in listing.videos] == ["Crust000008"]
    assert {row.video_id: row.reason for row in filtered}["Crumb000009"] == "over max_videos (1)"


def test_title_regex_applies_to_local_titles(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, {"Crust000008.srt": "manual.srt", "Crumb000009.srt": "manual.srt"})
    listing, _ = select_videos(local(folder, listing=str(LISTING), title_exclude="(?i)crust"))
    assert [v.id for v in listing.videos] == ["Crumb000009"]


def test_bad_folder_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"source\.transcripts_dir must be set"):
        select_videos(source_settings(ListSettings, section_config("source", {"type": "local"})))
    with pytest.raises(InputFileError, match="is not a folder"):
        select_videos(local(tmp_path / "missing"))
