"""Shards: the videos of a channel in a fixed number of groups, each group processed by one job per step.

A video's shard is a hash of its id modulo the config key ``shards``, so it never depends on the other
videos: a new upload changes one shard only, and an edit to one video's transcript reruns only its
shard's jobs. Inside a shard job every video's files are written under the shard's folder of the step
(``results/chunks/<shard>/<video id>.jsonl``); :func:`video_files` lists them again for the steps that
read every shard.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

VIDEO_ID = r"[A-Za-z0-9_-]{11}"
SHARD = r"s[0-9]+"


def shard_name(index: int, count: int) -> str:
    """The name of shard ``index`` of ``count``: ``s`` and the index, zero-padded to the widest one."""
    return f"s{index:0{len(str(max(count - 1, 0)))}d}"


def shard_of(video_id: str, count: int) -> str:
    """The shard of ``video_id`` when the videos are split into ``count`` shards."""
    if count < 1:
        raise ValueError(f"shard count must be at least 1, not {count}")
    digest = hashlib.sha256(video_id.encode("utf-8")).digest()
    return shard_name(int.from_bytes(digest[:8], "big") % count, count)


def group_by_shard(video_ids: Iterable[str], count: int) -> dict[str, list[str]]:
    """The shards that hold one of ``video_ids`` or more, by name, each with its videos in the given order."""
    groups: dict[str, list[str]] = {}
    for video_id in video_ids:
        groups.setdefault(shard_of(video_id, count), []).append(video_id)
    return dict(sorted(groups.items()))


def video_path(folder: str | Path, video_id: str, suffix: str) -> Path:
    """The file of ``video_id`` with ``suffix`` (e.g. ``.jsonl``) in a shard ``folder``."""
    return Path(folder) / f"{video_id}{suffix}"


def video_files(folders: Sequence[str | Path], suffix: str) -> list[Path]:
    """The files ``<video id><suffix>`` in the shard ``folders``, ordered by video id.

    ``suffix`` is matched whole: ``.jsonl`` does not pick up ``<video id>.dropped.jsonl``.
    """
    pattern = re.compile(rf"{VIDEO_ID}{re.escape(suffix)}")
    found = [
        path
        for folder in folders
        for path in Path(folder).iterdir()
        if pattern.fullmatch(path.name) and path.is_file()
    ]
    return sorted(found, key=lambda path: path.name)
