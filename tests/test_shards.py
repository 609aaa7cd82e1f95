"""Shards: which videos share the jobs of one shard, and how their files are found again."""

from __future__ import annotations

import random
import string
from collections import Counter
from pathlib import Path

import pytest

from tubetune.shards import group_by_shard, shard_name, shard_of, video_files

ALPHABET = string.ascii_letters + string.digits + "-_"


def video_ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(11)) for _ in range(n)]


def test_a_video_keeps_its_shard() -> None:
    # pinned: a change to the hash would move every video to another shard and rerun every job
    assert shard_of("Jk5Lz0Xc2Vb", 4) == "s0"
    assert shard_of("Jk5Lz0Xc2Vb", 64) == "s56"
    assert shard_of("Op1As9Df4Gh", 4) == "s3"


def test_names_are_padded_to_the_widest_shard() -> None:
    assert [shard_name(i, 4) for i in (0, 3)] == ["s0", "s3"]
    assert [shard_name(i, 64) for i in (0, 7, 63)] == ["s00", "s07", "s63"]
    assert shard_name(5, 1000) == "s005" and shard_name(0, 1) == "s0"
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("Jk5Lz0Xc2Vb", 0)


def test_ten_thousand_videos_spread_evenly() -> None:
    sizes = Counter(shard_of(video, 64) for video in video_ids(10_000))
    assert len(sizes) == 64
    assert min(sizes.values()) > 100 and max(sizes.values()) < 220  # mean 156


def test_a_new_video_changes_one_shard_only() -> None:
    videos = video_ids(500)
    before = group_by_shard(videos, 16)
    after = group_by_shard([*videos, "NewUpload01"], 16)
    changed = [name for name in after if after[name] != before.get(name)]
    assert changed == [shard_of("NewUpload01", 16)]
    assert after[changed[0]][-1] == "NewUpload01"  # listing order within the shard


def test_video_files_match_the_whole_suffix(tmp_path: Path) -> None:
    for shard, video in (("s1", "bbbbbbbbbbb"), ("s0", "aaaaaaaaaaa"), ("s1", "ccccccccccc")):
        folder = tmp_path / shard
        folder.mkdir(exist_ok=True)
        (folder / f"{video}.jsonl").write_text("")
        (folder / f"{video}.dropped.jsonl").write_text("")
    (tmp_path / "s0" / ".aaaaaaaaaaa.jsonl.tmp").write_text("")  # a half-written file of another run
    folders = [tmp_path / "s1", tmp_path / "s0"]
    assert [p.name for p in video_files(folders, ".jsonl")] == [
        "aaaaaaaaaaa.jsonl",
        "bbbbbbbbbbb.jsonl",
        "ccccccccccc.jsonl",
    ]
    assert [p.parent.name for p in video_files(folders, ".dropped.jsonl")] == ["s0", "s1", "s1"]
