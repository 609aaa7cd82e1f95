"""Content-addressed on-disk cache of LLM responses.

One JSON file per response at ``<dir>/<key[:2]>/<key>.json``, written atomically the moment the
response arrives, so a killed run loses nothing already paid for. Lookups go to the writable cache
first, then to read-only seed caches (the sample's reference responses).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tubetune.jsonio import write_json
from tubetune.llm.request import LLMRequest

logger = logging.getLogger(__name__)

# The origin of the sample's reference responses (data/sample/llm_cache): written for the sample, no usage.
REFERENCE_ORIGIN = "reference response written by hand for the sample channel (not produced by an API call)"


@dataclass(frozen=True)
class CachedResponse:
    """A stored response: the raw text the model produced plus what the call cost."""

    key: str
    text: str
    usage: dict[str, int] = field(default_factory=dict)
    stop_reason: str | None = None
    origin: str = "backend"

    def to_entry(self, request: LLMRequest) -> dict[str, Any]:
        return {
            "key": self.key,
            "request": request.to_dict(),
            "response": {"text": self.text, "usage": self.usage, "stop_reason": self.stop_reason},
            "origin": self.origin,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> CachedResponse:
        response = entry["response"]
        return cls(
            key=str(entry["key"]),
            text=str(response["text"]),
            usage={k: int(v) for k, v in (response.get("usage") or {}).items()},
            stop_reason=response.get("stop_reason"),
            origin=str(entry.get("origin", "backend")),
        )


def entry_path(directory: Path, key: str) -> Path:
    return directory / key[:2] / f"{key}.json"


class ResponseCache:
    def __init__(self, directory: str | Path, seeds: Sequence[str | Path] = ()) -> None:
        self.directory = Path(directory)
        self.seeds = [Path(s) for s in seeds]

    def get(self, request: LLMRequest) -> CachedResponse | None:
        key = request.key()
        for directory in (self.directory, *self.seeds):
            path = entry_path(directory, key)
            if not path.is_file():
                continue
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
                return CachedResponse.from_entry(entry)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("ignoring unreadable cache entry %s (%s)", path, exc)
        return None

    def put(self, request: LLMRequest, response: CachedResponse) -> Path:
        path = entry_path(self.directory, request.key())
        write_json(path, response.to_entry(request))
        return path

    def __contains__(self, request: LLMRequest) -> bool:
        return self.get(request) is not None


def iter_entries(directory: str | Path) -> Iterator[dict[str, Any]]:
    """Every entry stored under ``directory`` in key order; an unreadable one is skipped with a warning."""
    for path in sorted(Path(directory).glob("??/*.json")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            logger.warning("ignoring unreadable cache entry %s (%s)", path, exc)
            continue
        if isinstance(entry, dict):
            yield entry


def store_reference(directory: str | Path, request: LLMRequest, text: str) -> Path:
    """Store ``text`` as the reference reply to ``request`` in the seed cache ``directory``
    (origin :data:`REFERENCE_ORIGIN`, no usage): how the sample's replies are added."""
    response = CachedResponse(key=request.key(), text=text, stop_reason="end_turn", origin=REFERENCE_ORIGIN)
    return ResponseCache(directory).put(request, response)
