"""Step 6: one readable Markdown per video for a human to review the Q&A before training."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tubetune.generate.answers import timestamp_url
from tubetune.generate.prompts import format_seconds
from tubetune.jsonio import atomic_write_text, read_json, read_jsonl
from tubetune.source.models import watch_url

logger = logging.getLogger(__name__)


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines() or [""])


def render_review(
    transcript: Mapping[str, Any],
    qa: Sequence[Mapping[str, Any]],
    dropped: Sequence[Mapping[str, Any]],
    quarantined: Sequence[Mapping[str, Any]],
) -> str:
    video_id = str(transcript["video_id"])
    title = str(transcript.get("title") or video_id)
    lines = [f"# {title}", "", f"Video: {watch_url(video_id)}"]
    if transcript.get("status") != "ok":
        lines += ["", f"**Skipped:** {transcript.get('reason')}", ""]
        return "\n".join(lines)
    lines += [
        f"Transcript: {transcript.get('kind', '?')} captions, language {transcript.get('language') or '?'}",
        "",
        f"{len(qa)} question-answer pairs; {len(dropped)} questions dropped by the answer pass; "
        f"{len(quarantined)} quarantined before it.",
        "",
    ]
    for number, row in enumerate(qa, start=1):
        stamp = format_seconds(float(row["start"]))
        url = row.get("url") or timestamp_url(video_id, float(row["start"]))
        lines += [
            f"## {number}. {row['question']}",
            "",
            row["answer"],
            "",
            f"<sub>[{stamp}]({url}) · chunk `{row['chunk_id']}` · prompts "
            f"`{row.get('question_prompt_hash', '')}` / `{row.get('answer_prompt_hash', '')}`</sub>",
            "",
        ]
    if dropped or quarantined:
        lines += ["## Not used", "", "| chunk | question | stage | reason |", "|---|---|---|---|"]
        for row in [*quarantined, *dropped]:
            question = str(row.get("question") or "").replace("|", "\\|")
            reason = str(row.get("reason") or "").replace("|", "\\|")
            lines.append(f"| `{row.get('chunk_id')}` | {question} | {row.get('stage')} | {reason} |")
        lines.append("")
    return "\n".join(lines)


def review(
    transcript_path: str | Path,
    qa_path: str | Path,
    dropped_path: str | Path,
    quarantine_path: str | Path,
    page_path: str | Path,
) -> None:
    """The review page of one video (rule ``answers``, after pass 2) into ``page_path``."""
    text = render_review(
        read_json(transcript_path), read_jsonl(qa_path), read_jsonl(dropped_path), read_jsonl(quarantine_path)
    )
    atomic_write_text(page_path, text + "\n")


def review_index(page_paths: Sequence[str | Path], index_path: str | Path) -> None:
    """Rule ``review_index``: an index page linking every video's review page with its first line (the
    title), into ``index_path``."""
    lines = ["# Review", "", "One page per video: read the answers before training on them.", ""]
    folder = Path(index_path).parent
    for path in sorted((Path(p) for p in page_paths), key=lambda path: path.name):
        first = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
        lines.append(f"- [{first}]({Path(os.path.relpath(path, folder)).as_posix()})")
    atomic_write_text(index_path, "\n".join(lines) + "\n")
