"""Errors that carry one line telling the user what to fix, and :func:`one_line` to make such lines."""

from __future__ import annotations


class TubetuneError(Exception):
    """Bad input or environment. The message is one line naming what to fix."""


class ConfigError(TubetuneError):
    """A configuration value is wrong."""


class InputFileError(TubetuneError):
    """An input file (transcript, listing, dataset) cannot be used."""


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` with every run of whitespace (newlines too) as one space; cut to ``limit`` characters
    with a trailing "..." when it is longer."""
    flat = " ".join(str(text).split())
    if limit is None or len(flat) <= limit:
        return flat
    return flat[: limit - 3] + "..."
