"""Chat rows of the dataset splits (mlx-lm chat JSONL): read and checked in one place.

A row is ``{"messages": [{"role": ..., "content": ...}, ...], "meta": {...}}`` with at least two
messages; training with a masked prompt and every evaluation need the assistant's answer last.
A bad row is an :class:`~tubetune.errors.InputFileError` naming ``path:line``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tubetune.errors import InputFileError
from tubetune.jsonio import read_jsonl


def chat_messages(row: Mapping[str, Any], where: str, *, assistant_last: bool = True) -> list[dict[str, str]]:
    """The ``messages`` of one chat row, checked; ``where`` (e.g. ``test.jsonl:3``) starts each error."""
    messages = row.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise InputFileError(f"{where}: expected 'messages', a list of at least 2 chat messages")
    for message in messages:
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise InputFileError(f"{where}: every message needs a string 'role' and 'content'")
    if assistant_last and messages[-1]["role"] != "assistant":
        raise InputFileError(f"{where}: the last message must be the assistant's answer")
    return messages


def read_chat_rows(
    path: str | Path, *, assistant_last: bool = True, max_rows: int | None = None
) -> list[dict[str, Any]]:
    """The rows of a chat JSONL file (the first ``max_rows`` if given), each checked by
    :func:`chat_messages`."""
    rows: list[dict[str, Any]] = read_jsonl(path)[:max_rows]
    for number, row in enumerate(rows, start=1):
        chat_messages(row, f"{path}:{number}", assistant_last=assistant_last)
    return rows
