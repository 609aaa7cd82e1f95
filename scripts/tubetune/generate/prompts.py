"""Prompt files: a system part, a line ``<!-- user -->``, then a user template with {placeholders}."""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

from tubetune.errors import InputFileError
from tubetune.llm.request import prompt_hash

SEPARATOR = "<!-- user -->"


def format_seconds(seconds: float) -> str:
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class PromptTemplate:
    path: str
    system: str
    user_template: str

    @property
    def hash(self) -> str:
        return prompt_hash(self.system, self.user_template)

    def render(self, **values: object) -> str:
        try:
            return self.user_template.format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise InputFileError(
                f"{self.path}: bad placeholder {exc} (allowed: {', '.join('{' + k + '}' for k in values)};"
                " write literal braces as {{ and }})"
            ) from exc


def load_prompt(path: str | Path, required: tuple[str, ...]) -> PromptTemplate:
    """Read a prompt file and check it has both parts and every required placeholder."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read prompt file ({exc})") from exc
    if SEPARATOR not in text:
        raise InputFileError(
            f"{path}: missing the line '{SEPARATOR}' between the system part and the user part"
        )
    system, user = (part.strip() for part in text.split(SEPARATOR, 1))
    if not system or not user:
        raise InputFileError(f"{path}: the system part and the user part must both be non-empty")
    names = {field for _, field, _, _ in string.Formatter().parse(user) if field}
    missing = [name for name in required if name not in names]
    if missing:
        raise InputFileError(
            f"{path}: the user part lacks the placeholder(s) {', '.join('{' + m + '}' for m in missing)}"
        )
    return PromptTemplate(path=str(path), system=system, user_template=user)
