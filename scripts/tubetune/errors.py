"""Errors that carry one line telling the user what to fix."""

from __future__ import annotations


class TubetuneError(Exception):
    """Bad input or environment. The message is one line naming what to fix."""


class ConfigError(TubetuneError):
    """A configuration value is wrong."""


class InputFileError(TubetuneError):
    """An input file (transcript, listing, dataset) cannot be used."""
