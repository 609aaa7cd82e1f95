"""One LLM pass as Anthropic Message Batches: every cache miss of the pass at half the price.

:func:`run_batch_pass` takes every request of a pass (question extraction for every video, or the
answers for every video) with the check its reply must pass. Rounds:

1. Each request's re-ask chain is walked through the response cache (:meth:`LLMClient.resolve`).
   Chains that end in a valid reply, or in invalid replies after every re-ask, are done; the others
   need one more reply: the original request, or the re-ask after an invalid reply.
2. The needed requests that no open batch already carries go out as Message Batches (split at
   ``llm.batch_max_requests`` and ``llm.batch_max_mb``; custom_id = cache key). Each batch is written
   to the pass's state file before it is created and again with its id right after, so a run killed
   while polling resumes the same batches and never sends a request that is in flight.
3. Open batches are polled every ``llm.batch_poll_s`` with a progress bar of counts per state. The
   results of an ended batch are stored in the cache one by one as they are read.
4. Errored items (except ``invalid_request_error``) and expired items are sent again in the next
   round, up to ``llm.max_retries`` times, then quarantined with the reason; invalid replies are
   re-asked in the next round. Items of a canceled batch are not sent again in this run: the pass
   fails with one line and the next run sends them.

The per-shard rules then run from the cache: :class:`BatchResultBackend` stands in for the API there
and answers a request the pass could not get with the reason it was quarantined.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from tubetune.errors import TubetuneError, one_line
from tubetune.jsonio import atomic_write_text, canonical_json, read_json, write_json
from tubetune.llm.backends import (
    ANTHROPIC_KEY_ENV,
    REASON_LIMIT,
    USAGE_FIELDS,
    AnthropicBackend,
    BackendError,
    Completion,
    MissingCredentialsError,
    anthropic_usage,
    message_params,
)
from tubetune.llm.cache import CachedResponse
from tubetune.llm.client import ExtraCheck, LLMClient, Resolution
from tubetune.llm.request import LLMRequest
from tubetune.llm.settings import LLMSettings

if TYPE_CHECKING:
    import anthropic

logger = logging.getLogger(__name__)

STATE_VERSION = 1
NOT_FOUND_GRACE_S = 600.0  # the API may answer 404 for a batch it has just created
ORPHAN_WINDOW_S = 120.0  # how far apart a created batch and its state entry may be
ITEM_STATES = ("processing", "succeeded", "errored", "canceled", "expired")


class BatchPassError(TubetuneError):
    """The pass could not finish (canceled batches, a batch that vanished); a rerun resumes it."""


@dataclass(frozen=True)
class PlannedRequest:
    """One request of a pass, the check its reply must pass, and a label for logs (a chunk id)."""

    request: LLMRequest
    validate: ExtraCheck | None = None
    label: str = ""


@dataclass
class PassCounts:
    """What one run of a pass did; written into the pass's report and usage record."""

    requests: int = 0
    cache_hits: int = 0
    batches: int = 0
    rounds: int = 0
    submitted: int = 0
    resumed: int = 0
    reasks: int = 0
    results: Counter[str] = field(default_factory=Counter)
    usage: Counter[str] = field(default_factory=Counter)


@dataclass
class _PassRun:
    """One run of a pass: where it keeps its batches, what it has seen, what it decided."""

    name: str
    state: BatchState
    client: LLMClient
    counts: PassCounts
    connection: _Connection | None = None
    attempts: Counter[str] = field(default_factory=Counter)
    quarantined: dict[str, str] = field(default_factory=dict)
    canceled: set[str] = field(default_factory=set)

    @property
    def api(self) -> anthropic.Anthropic:
        assert self.connection is not None
        return self.connection.api


# ------------------------------------------------------------------------------------------------ state


def state_path(cache_dir: str | Path, pass_name: str) -> Path:
    """Where a pass keeps its open batches: ``<llm.cache_dir>/batches/<pass>.json``."""
    return Path(cache_dir) / "batches" / f"{pass_name}.json"


class BatchState:
    """The open batches of one pass, on disk. Every change is written at once (atomically).

    ``batches``: local id -> {"id": batch id or None while being created, "created": ISO time,
    "keys": custom ids, "requests": path of the JSONL with each item's full request}.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.batches: dict[str, dict[str, Any]] = {}
        if path.is_file():
            data = read_json(path)
            if data.get("version") != STATE_VERSION:
                raise BatchPassError(f"{path}: unknown batch state version {data.get('version')!r}")
            self.batches = dict(data.get("batches") or {})

    def save(self) -> None:
        write_json(self.path, {"version": STATE_VERSION, "batches": self.batches})

    def in_flight(self) -> set[str]:
        return {key for entry in self.batches.values() for key in entry["keys"]}

    def history(self, entry: Mapping[str, Any], outcome: Mapping[str, Any]) -> None:
        """Append a collected batch to ``history.jsonl`` beside the state file, for the record."""
        line = canonical_json({**{k: v for k, v in entry.items() if k != "keys"}, **outcome}) + "\n"
        with (self.path.parent / "history.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(line)


def _requests_path(state: BatchState, local_id: str) -> Path:
    return state.path.parent / "requests" / f"{local_id}.jsonl"


def _write_requests(path: Path, requests: Sequence[LLMRequest]) -> None:
    atomic_write_text(path, "".join(canonical_json(r.to_dict()) + "\n" for r in requests))


def _read_requests(path: Path) -> dict[str, LLMRequest]:
    requests: dict[str, LLMRequest] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                request = LLMRequest.from_dict(json.loads(line))
                requests[request.key()] = request
    return requests


# ------------------------------------------------------------------------------------------------ pass


def run_batch_pass(
    pass_name: str,
    planned: Sequence[PlannedRequest],
    client: LLMClient,
    api: anthropic.Anthropic | None = None,
) -> dict[str, Any]:
    """Get a valid reply (or a reason to quarantine) for every planned request; return the report.

    ``api`` defaults to an SDK client built from the settings (ANTHROPIC_API_KEY needed only when
    something must be sent or is in flight). The report lists the quarantined cache keys with their
    reasons and what the pass did; it is the pass's output file and its usage record.
    """
    started = time.monotonic()
    run = _PassRun(
        name=pass_name,
        state=BatchState(state_path(client.settings.cache_dir, pass_name)),
        client=client,
        counts=PassCounts(requests=len(planned)),
    )
    _send_until_answered(run, planned, api)
    resolutions = _final_resolutions(run, planned)
    return _report(run, resolutions, time.monotonic() - started)


def _send_until_answered(
    run: _PassRun, planned: Sequence[PlannedRequest], api: anthropic.Anthropic | None
) -> None:
    """Rounds of sending what the cache lacks and collecting the results, until nothing is needed or
    in flight."""
    counts = run.counts
    first_round = True
    while True:
        needed, done_from_cache = _needed(planned, run.client, run.quarantined)
        in_flight = run.state.in_flight()
        if first_round:
            counts.cache_hits = done_from_cache
            counts.resumed = sum(1 for key in needed if key in in_flight)
            logger.info(
                "pass %s: %d requests, %d resolved from the cache, %d need a reply (%d of them in the "
                "%d batches still open)",
                run.name,
                len(planned),
                done_from_cache,
                len(needed),
                counts.resumed,
                len(run.state.batches),
            )
            first_round = False
        to_send = [r for key, r in needed.items() if key not in in_flight and key not in run.canceled]
        if not to_send and not run.state.batches:
            return
        if run.connection is None:
            run.connection = _Connection(run.client, api)
        if to_send:
            counts.rounds += 1
            counts.reasks += sum(1 for r in to_send if len(r.messages) > 1)
            counts.submitted += len(to_send)
            run.attempts.update(request.key() for request in to_send)
            counts.batches += _submit(to_send, run)
        _poll_and_collect(run)


def _final_resolutions(run: _PassRun, planned: Sequence[PlannedRequest]) -> list[Resolution]:
    """Where every planned request ends in the cache; a BatchPassError if one still has no reply."""
    unresolved = run.canceled - set(run.quarantined)
    if unresolved:
        raise BatchPassError(
            f"pass {run.name}: {len(unresolved)} request(s) were in a canceled batch and got no reply; "
            "run again to send them in a new batch"
        )
    resolutions = [run.client.resolve(item.request, item.validate) for item in planned]
    unanswered = [r for r in resolutions if r.missing is not None and r.missing.key() not in run.quarantined]
    if unanswered:
        raise BatchPassError(
            f"pass {run.name}: {len(unanswered)} request(s) still without a reply; run again"
        )
    return resolutions


def _report(run: _PassRun, resolutions: Sequence[Resolution], wall_s: float) -> dict[str, Any]:
    """The pass's report: its usage record, what the rounds did and the quarantined cache keys."""
    counts, settings = run.counts, run.client.settings
    # valid reply / every re-ask invalid / quarantined by the batch API
    outcomes = Counter("valid" if r.result else "invalid" if r.error else "quarantined" for r in resolutions)
    logger.info(
        "pass %s done: %d batches, %d requests sent in %d rounds, results %s, %d quarantined",
        run.name,
        counts.batches,
        counts.submitted,
        counts.rounds,
        dict(counts.results),
        len(run.quarantined),
    )
    return {
        "pass": run.name,
        "mode": "batch",
        "backend": settings.backend,
        "model": settings.request_model,
        "job": f"batch/{run.name}",
        "requests": counts.requests,
        "cache_hits": counts.cache_hits,
        "calls": counts.results["succeeded"],
        "reasks": counts.reasks,
        "valid": outcomes["valid"],
        "invalid": outcomes["invalid"],
        "batches": counts.batches,
        "rounds": counts.rounds,
        "submitted": counts.submitted,
        "resumed_in_flight": counts.resumed,
        "results": dict(counts.results),
        **{name: int(counts.usage.get(name, 0)) for name in USAGE_FIELDS},
        "wall_s": round(wall_s, 3),
        "quarantined": dict(sorted(run.quarantined.items())),
    }


def _needed(
    planned: Sequence[PlannedRequest], client: LLMClient, quarantined: Mapping[str, str]
) -> tuple[dict[str, LLMRequest], int]:
    """Requests that need a reply now (cache key -> request), and how many chains are done."""
    needed: dict[str, LLMRequest] = {}
    done = 0
    for item in planned:
        resolution = client.resolve(item.request, item.validate)
        if resolution.missing is None:
            done += 1
            continue
        key = resolution.missing.key()
        if key not in quarantined:
            needed.setdefault(key, resolution.missing)
    return needed, done


class _Connection:
    """The SDK client, built only when something has to be sent or polled."""

    def __init__(self, client: LLMClient, api: anthropic.Anthropic | None) -> None:
        if api is None:
            import os

            key = os.environ.get(ANTHROPIC_KEY_ENV, "").strip()
            if not key:
                raise MissingCredentialsError(
                    f"llm.mode batch: requests miss the cache ({', '.join(client.cache_dirs())}) and "
                    f"{ANTHROPIC_KEY_ENV} is not set: set it, or restore the cache"
                )
            api = AnthropicBackend(client.settings, key).client()
        self.api = api
        self.settings = client.settings


def split_batches(
    requests: Sequence[LLMRequest], settings: LLMSettings
) -> Iterator[list[tuple[LLMRequest, dict[str, Any]]]]:
    """The items of a round split at the batch limits (request count, bytes of request JSON)."""
    max_count, max_bytes = settings.batch_max_requests, settings.batch_max_mb * 1_000_000
    batch: list[tuple[LLMRequest, dict[str, Any]]] = []
    size = 0
    for request in requests:
        item = {"custom_id": request.key(), "params": message_params(request, settings)}
        item_size = len(canonical_json(item).encode("utf-8")) + 2
        if batch and (len(batch) >= max_count or size + item_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append((request, item))
        size += item_size
    if batch:
        yield batch


def _submit(requests: Sequence[LLMRequest], run: _PassRun) -> int:
    """Create batches for ``requests``; each is in the state file before and after it is created."""
    created = 0
    state = run.state
    for items in split_batches(requests, run.client.settings):
        local_id = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        path = _requests_path(state, local_id)
        _write_requests(path, [request for request, _ in items])
        entry = {
            "id": None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "keys": [request.key() for request, _ in items],
            "requests": str(path),
        }
        state.batches[local_id] = entry
        state.save()
        try:
            batch = run.api.messages.batches.create(requests=[item for _, item in items])  # type: ignore[misc]
        except Exception as exc:
            del state.batches[local_id]
            state.save()
            reason = one_line(str(exc), REASON_LIMIT)
            raise BackendError(f"anthropic: creating a Message Batch failed: {reason}") from exc
        entry["id"] = batch.id
        state.save()
        created += 1
        logger.info("created batch %s with %d requests (%s)", batch.id, len(items), path.name)
    return created


def _poll_and_collect(run: _PassRun) -> None:
    """Poll every open batch until it has ended, collecting each one's results as it ends."""
    state = run.state
    _adopt_orphans(run)
    total = sum(len(entry["keys"]) for entry in state.batches.values())
    with tqdm(total=total, desc=f"batches {run.name}", unit="request") as bar:
        while state.batches:
            tally: Counter[str] = Counter()
            for local_id, entry in list(state.batches.items()):
                batch = _retrieve(entry, run)
                if batch is None:  # vanished: its requests are needed again
                    del state.batches[local_id]
                    state.save()
                    continue
                for name in ITEM_STATES:
                    tally[name] += int(getattr(batch.request_counts, name, 0) or 0)
                if batch.processing_status == "ended":
                    _collect(entry, batch.id, run)
                    state.history(entry, {"ended": batch.ended_at.isoformat() if batch.ended_at else None})
                    del state.batches[local_id]
                    state.save()
                    Path(entry["requests"]).unlink(missing_ok=True)  # every reply is in the cache now
            bar.n = total - tally["processing"] if state.batches else total
            bar.set_postfix({name: tally[name] for name in ITEM_STATES}, refresh=True)
            if state.batches:
                time.sleep(run.client.settings.batch_poll_s)


def _retrieve(entry: Mapping[str, Any], run: _PassRun) -> Any:
    import anthropic

    try:
        return run.api.messages.batches.retrieve(entry["id"])
    except anthropic.NotFoundError:
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(entry["created"])).total_seconds()
        if age < NOT_FOUND_GRACE_S:
            logger.info("batch %s not visible yet (HTTP 404 %.0f s after create)", entry["id"], age)
            return _StillProcessing()
        logger.warning(
            "batch %s: HTTP 404 %.0f s after create; its requests are sent again", entry["id"], age
        )
        return None


class _StillProcessing:
    processing_status = "in_progress"
    request_counts = None


def _adopt_orphans(run: _PassRun) -> None:
    """Batches whose create call may have reached the API without its id being saved (a run killed
    in between): find each among the newest batches by creation time and size, or drop the entry."""
    state = run.state
    orphans = {local_id: e for local_id, e in state.batches.items() if e.get("id") is None}
    if not orphans:
        return
    known = {e.get("id") for e in state.batches.values()}
    listed = list(run.api.messages.batches.list(limit=100))
    for local_id, entry in orphans.items():
        created = datetime.fromisoformat(entry["created"])
        match = next(
            (
                b
                for b in listed
                if b.id not in known
                and abs((b.created_at - created).total_seconds()) <= ORPHAN_WINDOW_S
                and _size(b) == len(entry["keys"])
            ),
            None,
        )
        if match is None:
            logger.info("batch entry %s was never created; its requests are sent again", local_id)
            del state.batches[local_id]
        else:
            logger.info("batch entry %s is %s (created before the last run stopped)", local_id, match.id)
            entry["id"] = match.id
            known.add(match.id)
        state.save()


def _size(batch: Any) -> int:
    counts = batch.request_counts
    return sum(int(getattr(counts, name, 0) or 0) for name in ITEM_STATES)


def _collect(entry: Mapping[str, Any], batch_id: str, run: _PassRun) -> None:
    """Store every succeeded result in the cache as it is read; decide what happens to the others."""
    requests = _read_requests(Path(entry["requests"]))
    max_retries = run.client.settings.max_retries
    counts, attempts, quarantined = run.counts, run.attempts, run.quarantined
    for item in run.api.messages.batches.results(batch_id):
        key = item.custom_id
        request = requests.get(key)
        result = item.result
        counts.results[result.type] += 1
        if request is None:
            logger.warning("batch %s: result for unknown custom_id %s ignored", batch_id, key)
            continue
        if result.type == "succeeded":
            message = result.message
            text = "".join(block.text for block in message.content if block.type == "text")
            usage = anthropic_usage(message.usage)
            counts.usage.update(usage)
            run.client.cache.put(
                request,
                CachedResponse(
                    key=key, text=text, usage=usage, stop_reason=message.stop_reason, origin="batch"
                ),
            )
        elif result.type == "errored":
            kind, detail = _error_of(result)
            if kind == "invalid_request_error":
                quarantined[key] = f"anthropic batch: {kind}: {detail}"
            elif attempts[key] > max_retries:
                quarantined[key] = f"anthropic batch: {kind} after {attempts[key]} attempts: {detail}"
            else:
                logger.info("request %s errored (%s); sent again next round", key[:12], kind)
        elif result.type == "expired":
            if attempts[key] > max_retries:
                quarantined[key] = (
                    f"anthropic batch: expired {attempts[key]} times (not processed within 24 h)"
                )
        elif result.type == "canceled":
            run.canceled.add(key)
    logger.info("collected batch %s: %s", batch_id, dict(counts.results))


def _error_of(result: Any) -> tuple[str, str]:
    error = getattr(result, "error", None)
    inner = getattr(error, "error", error)
    kind = str(getattr(inner, "type", "error"))
    return kind, one_line(str(getattr(inner, "message", "") or ""), REASON_LIMIT)


# --------------------------------------------------------------------------------------- per-video rules


class BatchResultBackend:
    """The backend of a per-video rule in batch mode: the batch pass already stored every reply.

    A request the pass quarantined fails with the pass's reason (the caller quarantines the item);
    any other miss means the pass's report is stale, which a rerun of the pass fixes.
    """

    name = "batch"

    def __init__(self, report_path: str | Path) -> None:
        self.report_path = Path(report_path)
        self.quarantined: dict[str, str] = dict(read_json(self.report_path).get("quarantined") or {})

    def complete(self, request: LLMRequest) -> Completion:
        key = request.key()
        reason = self.quarantined.get(key)
        if reason is not None:
            raise BackendError(reason)
        raise BackendError(
            f"request {key} has no reply in the cache after the batch pass ({self.report_path}); "
            "run the workflow again"
        )


def job_client(llm: LLMSettings, batch_report: str | Path | None) -> LLMClient:
    """The client of a per-video LLM job: it calls the backend on a cache miss, or with
    ``batch_report`` (``llm.mode: batch``) answers from the replies the batch pass stored."""
    return LLMClient(llm, backend=BatchResultBackend(batch_report) if batch_report else None)
