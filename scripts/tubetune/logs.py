"""Logging for rule scripts: one log file per rule, one clear line on failure."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from tubetune.errors import TubetuneError

T = TypeVar("T")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
logger = logging.getLogger("tubetune")


def setup_logging(log_file: str | Path | None, level: int = logging.INFO) -> None:
    """Send log records to ``log_file`` (the rule's ``log:``) and warnings and errors to stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level)
    if log_file is not None:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path, mode="w", encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(file_handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if log_file is not None else level)
    console.setFormatter(logging.Formatter("tubetune %(levelname)s: %(message)s"))
    root.addHandler(console)
    # Chatty libraries stay at WARNING unless asked otherwise.
    for name in ("httpx", "httpcore", "urllib3", "anthropic", "matplotlib", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`TubetuneError` into one log line and exit status 1, without a traceback.

    The traceback still goes to the log file at DEBUG level for whoever wants it.
    """
    try:
        yield
    except TubetuneError as exc:
        logger.debug("traceback", exc_info=True)
        logger.error("%s", exc)
        sys.exit(1)


def run_step(log_file: str | Path | None, step: Callable[[], T]) -> T:
    """Set up logging to ``log_file`` and run ``step`` with user errors reported as one line."""
    setup_logging(log_file)
    with user_errors():
        return step()
    raise AssertionError("unreachable")  # pragma: no cover
