"""Prompt files (a system part, a line ``<!-- user -->``, then a user template with {placeholders}) and
the LLM request that asks a prompt about one chunk."""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tubetune.errors import InputFileError
from tubetune.generate.chunk import Chunk
from tubetune.llm.request import LLMRequest, Message, prompt_hash
from tubetune.llm.settings import LLMSettings

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


def chunk_request(
    chunk: Chunk,
    prompt: PromptTemplate,
    llm: LLMSettings,
    output_schema: Mapping[str, Any],
    **values: object,
) -> LLMRequest:
    """The request asking ``prompt`` about ``chunk``: the user part filled with the chunk's title, start,
    end and text and ``values``, the reply constrained by ``output_schema``."""
    user = prompt.render(
        title=chunk.title,
        start=format_seconds(chunk.start),
        end=format_seconds(chunk.end),
        chunk=chunk.text,
        **values,
    )
    return prompt_request(prompt, user, llm, output_schema)


def prompt_request(
    prompt: PromptTemplate, user: str, llm: LLMSettings, output_schema: Mapping[str, Any]
) -> LLMRequest:
    """The request of ``prompt``'s system part and the rendered ``user`` text, for ``llm``'s backend and
    model, the reply constrained by ``output_schema``."""
    return LLMRequest(
        backend=llm.backend,
        model=llm.request_model,
        system=prompt.system,
        messages=(Message("user", user),),
        output_schema=dict(output_schema),
        max_tokens=llm.max_tokens,
    )
