"""What the two LLM passes inside ``build_dataset`` (quality, augment) share: the client of the pass
(online, or Message Batches first with ``llm.mode: batch``), and its usage record."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tubetune.jsonio import write_json
from tubetune.llm.batch import PlannedRequest, job_client, run_batch_pass
from tubetune.llm.client import LLMClient
from tubetune.llm.ledger import COUNTERS, TOKENS
from tubetune.llm.settings import LLMSettings


def pass_client(
    llm: LLMSettings, pass_name: str, planned: Sequence[PlannedRequest], usage_path: str | Path
) -> LLMClient:
    """The client a pass reads its replies with. ``llm.mode: batch``: every cache miss goes out as
    Message Batches first (:func:`run_batch_pass`), whose report is the pass's usage record
    (``usage_path``); the client then answers from the cache, a quarantined request with its reason."""
    if not llm.batch:
        return LLMClient(llm)
    write_json(usage_path, run_batch_pass(pass_name, planned, LLMClient(llm)))
    return job_client(llm, usage_path)


def write_usage(
    client: LLMClient, llm: LLMSettings, pass_name: str, usage_path: str | Path, started: float
) -> None:
    """The pass's usage record: online, what ``client`` did; batch mode, the pass report is already there."""
    if not llm.batch:
        job = f"build_dataset/{pass_name}"
        write_json(usage_path, client.usage_record(pass_name, job, time.monotonic() - started))


def zero_usage(llm: LLMSettings, pass_name: str) -> dict[str, Any]:
    """The usage record of a disabled pass: nothing sent, nothing read (the ledger leaves it out)."""
    return {
        "pass": pass_name,
        "mode": "batch" if llm.batch else "online",
        "backend": llm.backend,
        "model": llm.request_model,
        "job": f"build_dataset/{pass_name}",
        "enabled": False,
        **dict.fromkeys((*COUNTERS, *TOKENS), 0),
        "wall_s": 0.0,
    }
