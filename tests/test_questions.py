from __future__ import annotations

from pathlib import Path

import pytest

from tubetune.config import section_config
from tubetune.errors import ConfigError, InputFileError
from tubetune.generate.chunk import Chunk
from tubetune.generate.prompts import load_prompt
from tubetune.generate.questions import QuestionSettings, validate_questions
from tubetune.jsonio import read_jsonl, write_jsonl
from tubetune.settings import settings_from

SETTINGS = {"per_1k_tokens": 7, "min_per_chunk": 2, "max_per_chunk": 8, "min_chars": 12, "max_chars": 300}


def test_question_count_scales_with_chunk_length() -> None:
    settings = settings_from(QuestionSettings, SETTINGS, "questions")
    assert [settings.count_for(n) for n in (50, 300, 570, 1000, 5000)] == [2, 2, 4, 7, 8]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"min_per_chunk": 9, "max_per_chunk": 8},
            r"questions.min_per_chunk \(9\) is above questions.max_per_chunk \(8\)",
        ),
        (
            {"min_chars": 40, "max_chars": 30},
            r"questions.min_chars \(40\) is above questions.max_chars \(30\)",
        ),
    ],
)
def test_crossed_question_bounds_are_one_line_config_errors(values: dict[str, int], message: str) -> None:
    section = {key: value for key, value in section_config("questions", values).items() if key != "prompt"}
    with pytest.raises(ConfigError, match=message):
        settings_from(QuestionSettings, section, "questions")


def test_validation_quarantines_with_reasons(tmp_path: Path) -> None:
    chunk = Chunk("abcdefghijk-c000", "abcdefghijk", "Title", 0, 1.0, 60.0, 100, "text")
    write_jsonl(tmp_path / "chunks.jsonl", [chunk.to_dict()])
    write_jsonl(
        tmp_path / "raw.jsonl",
        [
            {
                "chunk_id": chunk.chunk_id,
                "video_id": "abcdefghijk",
                "status": "ok",
                "prompt_hash": "p1",
                "questions": [
                    "How long should the autolyse last?",
                    "how long should the  autolyse last?",
                    "Tell me about hydration.",
                    "What does the host say in the video about salt?",
                    "Why?",
                    42,
                ],
            },
            {
                "chunk_id": "abcdefghijk-c000",
                "video_id": "abcdefghijk",
                "status": "quarantined",
                "reason": "invalid output after 2 re-asks",
                "questions": [],
            },
        ],
    )
    kept, quarantined = validate_questions(
        tmp_path / "raw.jsonl",
        tmp_path / "chunks.jsonl",
        tmp_path / "q.jsonl",
        tmp_path / "quarantine.jsonl",
        SETTINGS,
    )
    assert [q.question for q in kept] == ["How long should the autolyse last?"]
    assert kept[0].question_id == "abcdefghijk-c000-q00" and kept[0].prompt_hash == "p1"
    assert [r["reason"] for r in quarantined] == [
        "repeats another question of the same chunk",
        "not a question (no question mark at the end)",
        "refers to the recording instead of the subject",
        "too short (4 < 12 characters)",
        "not a string",
        "invalid output after 2 re-asks",
    ]
    assert read_jsonl(tmp_path / "quarantine.jsonl") == quarantined


def test_prompt_file_problems_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "p.md"
    path.write_text("system only")
    with pytest.raises(InputFileError, match="missing the line '<!-- user -->'"):
        load_prompt(path, ("chunk",))
    path.write_text("system\n<!-- user -->\nno placeholder")
    with pytest.raises(InputFileError, match=r"lacks the placeholder\(s\) \{chunk\}"):
        load_prompt(path, ("chunk",))
    path.write_text("system\n<!-- user -->\n{chunk} {oops}")
    with pytest.raises(InputFileError, match="bad placeholder 'oops'"):
        load_prompt(path, ("chunk", "oops")).render(chunk="x")
