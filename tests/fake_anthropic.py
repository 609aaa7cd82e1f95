"""A fake Anthropic API: a real HTTP server on 127.0.0.1 serving Messages and Message Batches.

Point the real ``anthropic`` SDK at ``server.base_url``. Each POST /v1/messages gets a reply chosen
in this order: the next scripted :class:`Reply` (``server.script``), else the responder
(``server.respond_with(fn)``, ``fn(body) -> Reply``), else the ``server.always`` reply, else a 400 that
names the problem, so an unexpected call fails loudly. Every request (any route) is recorded in
``server.requests`` with its method, headers and JSON body.

    server.script(ok({"questions": []}), rate_limited(), server_error())
    server.respond_with(channel_responder)          # answers the pipeline's two prompts

Latency: ``FakeAnthropic(latency=Latency(first_token_s=0.6, tokens_per_s=60.0))`` makes every
successful /v1/messages reply wait ``first_token_s + output_tokens / tokens_per_s``;
``server.in_flight`` and ``server.max_in_flight`` count /v1/messages requests served at once.

Message Batches (``client.messages.batches.create/retrieve/results/cancel/list/delete``): each item's
params get a reply by the same selection as a /v1/messages request, when the batch is created; the
batch stays ``in_progress`` for ``batch_processing_s`` seconds (items finish evenly over that time),
then ends. ``server.batch_outcomes(fn)`` scripts per-item failures, ``not_found_after_create=N`` makes
the first N retrieves of a new batch answer 404 (as the real API may right after create), and
results come back in reverse submission order.

The server is thread-safe and its URLs hold only host and port, so a subprocess (Snakemake) can use it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tubetune.config import section_config
from tubetune.dataset.dedup import STOPWORDS
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

# retry-after-ms takes precedence over retry-after in the SDK; 1 ms keeps its backoff short.
# (retry-after: 0 alone is not enough: the SDK ignores a zero wait and backs off 0.5 s, 1 s, ...)
FAST_RETRY_HEADERS = {"retry-after": "0", "retry-after-ms": "1"}

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024
BATCH_LIFETIME_S = 24 * 3600.0
BATCH_OUTCOMES = ("expired", "canceled")


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP reply."""

    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    method: str = "POST"


Responder = Callable[[dict[str, Any]], Reply]
OutcomeRule = Callable[[str, dict[str, Any]], "str | None"]


def ok(
    content: Any,
    *,
    input_tokens: int = 100,
    output_tokens: int = 20,
    stop_reason: str = "end_turn",
    cache_read_input_tokens: int = 0,
    delay_s: float = 0.0,
) -> Reply:
    """A 200 Messages API reply whose single text block is ``content`` (a str, or dumped as JSON)."""
    text = content if isinstance(content, str) else json.dumps(content)
    body = {
        "id": "",  # filled in per request
        "type": "message",
        "role": "assistant",
        "model": "",  # the requested model, filled in per request
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cache_read_input_tokens,
            "service_tier": "standard",
        },
    }
    return Reply(200, body, delay_s=delay_s)


def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    """An API error in the wire format: {"type": "error", "error": {"type": ..., "message": ...}}."""
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": ""}
    return Reply(status, body, headers=dict(headers or {}))


def rate_limited() -> Reply:
    return error(429, "rate_limit_error", "Rate limit exceeded.", FAST_RETRY_HEADERS)


def server_error() -> Reply:
    return error(500, "api_error", "Internal server error", FAST_RETRY_HEADERS)


def overloaded() -> Reply:
    return error(529, "overloaded_error", "Overloaded", FAST_RETRY_HEADERS)


@dataclass(frozen=True)
class Latency:
    """How long a successful message takes: the first token, then the output at a steady rate."""

    first_token_s: float = 0.0
    tokens_per_s: float = 0.0  # 0: the output takes no time

    def seconds(self, reply: Reply) -> float:
        """The wait before ``reply`` is sent; 0 for anything but a 200 message."""
        body = reply.body or {}
        if reply.status != 200 or body.get("type") != "message":
            return 0.0
        tokens = int((body.get("usage") or {}).get("output_tokens") or 0)
        streaming = tokens / self.tokens_per_s if self.tokens_per_s > 0 else 0.0
        return self.first_token_s + streaming


NO_LATENCY = Latency()


def _rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class BatchItem:
    """One request of a batch and the result it gets if it finishes before a cancel."""

    custom_id: str
    params: dict[str, Any]
    result: dict[str, Any]
    finishes_at: float


@dataclass
class FakeBatch:
    """A Message Batch; its status and counts follow from the clock (see :meth:`state`)."""

    id: str
    items: list[BatchItem]
    created_at: float
    processing_s: float
    cancel_s: float
    not_found_left: int = 0
    cancel_initiated_at: float | None = None
    deleted: bool = False

    @property
    def ends_at(self) -> float:
        end = self.created_at + self.processing_s
        if self.cancel_initiated_at is not None:
            end = min(end, self.cancel_initiated_at + self.cancel_s)
        return end

    def status(self, now: float) -> str:
        if now >= self.ends_at:
            return "ended"
        return "canceling" if self.cancel_initiated_at is not None else "in_progress"

    def final_result(self, item: BatchItem) -> dict[str, Any]:
        """The item's result once the batch has ended: canceled if a cancel came before it finished."""
        if self.cancel_initiated_at is not None and item.finishes_at > self.cancel_initiated_at:
            return {"type": "canceled"}
        return item.result

    def results(self) -> list[dict[str, Any]]:
        """Result lines in reverse submission order (the real API promises no order)."""
        return [
            {"custom_id": item.custom_id, "result": self.final_result(item)} for item in reversed(self.items)
        ]

    def wire(self, base_url: str, now: float, canceling: bool = False) -> dict[str, Any]:
        """The batch object as the API sends it; ``canceling``: as the answer to the cancel request."""
        status = "canceling" if canceling else self.status(now)
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if status == "ended":
            for item in self.items:
                counts[self.final_result(item)["type"]] += 1
        else:
            counts["processing"] = len(self.items)
        ended = status == "ended"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": _rfc3339(self.created_at),
            "expires_at": _rfc3339(self.created_at + BATCH_LIFETIME_S),
            "ended_at": _rfc3339(self.ends_at) if ended else None,
            "cancel_initiated_at": _rfc3339(self.cancel_initiated_at),
            "archived_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }


@dataclass(frozen=True)
class _Answer:
    status: int
    payload: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many concurrent clients connect at once


class FakeAnthropic:
    """The server. Use as a context manager or through the ``fake_anthropic`` fixture."""

    def __init__(
        self,
        *,
        latency: Latency = NO_LATENCY,
        batch_processing_s: float = 0.0,
        batch_cancel_s: float = 0.0,
        not_found_after_create: int = 0,
    ) -> None:
        self.latency = latency
        self.batch_processing_s = batch_processing_s
        self.batch_cancel_s = batch_cancel_s
        self.not_found_after_create = not_found_after_create
        self._replies: deque[Reply] = deque()
        self._repeat: Reply | None = None
        self._responder: Responder | None = None
        self._outcomes: OutcomeRule | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._batch_ids = itertools.count(1)
        self.requests: list[RecordedRequest] = []
        self.batches: dict[str, FakeBatch] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = _ThreadingServer(("127.0.0.1", 0), self._handler_class())
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, *replies: Reply) -> None:
        """Queue replies, served in order, one per request (or batch item)."""
        with self._lock:
            self._replies.extend(replies)

    def always(self, reply: Reply | None) -> None:
        """Serve ``reply`` to every request once the queue is empty (None: back to 'unscripted')."""
        with self._lock:
            self._repeat = reply

    def respond_with(self, responder: Responder | None) -> None:
        """Answer with ``responder(body)`` whatever the scripted queue does not (None: no responder)."""
        with self._lock:
            self._responder = responder

    def batch_outcomes(self, rule: OutcomeRule | None) -> None:
        """Per-item batch failures: ``rule(custom_id, params)`` returns None (a normal reply),
        "errored:<error type>", "expired" or "canceled"."""
        with self._lock:
            self._outcomes = rule

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._replies)

    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    def batch_items_submitted(self) -> list[str]:
        """Every custom_id of every accepted batch, in submission order, repeats included."""
        with self._lock:
            return [item.custom_id for batch in self.batches.values() for item in batch.items]

    def backend_calls(self) -> int:
        """/v1/messages requests plus batch items: what a real account would have processed."""
        return len(self.message_requests()) + len(self.batch_items_submitted())

    def start(self) -> FakeAnthropic:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="fake-anthropic",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- replies -------------------------------------------------------------------------------

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
            responder, repeat = self._responder, self._repeat
        if responder is not None:
            return responder(body)
        if repeat is not None:
            return repeat
        return error(400, "invalid_request_error", f"fake server: no reply scripted for {body.get('model')}")

    def _message(self, reply: Reply, body: dict[str, Any], number: int) -> dict[str, Any]:
        payload = dict(reply.body or {})
        if payload.get("type") == "message":
            payload["id"] = f"msg_fake_{number:04d}"
            payload["model"] = body.get("model", "unknown")
        elif payload.get("type") == "error":
            payload["request_id"] = f"req_fake_{number:04d}"
        return payload

    # -- routes --------------------------------------------------------------------------------

    def _messages(self, body: dict[str, Any], number: int) -> tuple[Reply, dict[str, Any]]:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self._next_reply(body)
            wait = reply.delay_s + self.latency.seconds(reply)
            if wait:
                time.sleep(wait)
            return reply, self._message(reply, body, number)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _create_batch(self, body: dict[str, Any], size: int) -> _Answer:
        if size > MAX_BATCH_BYTES:
            return _error_answer(413, "request_too_large", f"batch of {size} bytes exceeds {MAX_BATCH_BYTES}")
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return _error_answer(400, "invalid_request_error", "requests: a non-empty list is required")
        if len(requests) > MAX_BATCH_REQUESTS:
            return _error_answer(
                400, "invalid_request_error", f"requests: at most {MAX_BATCH_REQUESTS} requests per batch"
            )
        seen: set[str] = set()
        for index, request in enumerate(requests):
            custom_id = request.get("custom_id") if isinstance(request, dict) else None
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                return _error_answer(
                    400,
                    "invalid_request_error",
                    f"requests.{index}.custom_id: {custom_id!r} does not match {CUSTOM_ID.pattern}",
                )
            if custom_id in seen:
                return _error_answer(
                    400,
                    "invalid_request_error",
                    f"requests.{index}.custom_id: {custom_id!r} is used by another request in this batch",
                )
            if not isinstance(request.get("params"), dict):
                return _error_answer(
                    400, "invalid_request_error", f"requests.{index}.params: an object is required"
                )
            seen.add(custom_id)
        with self._lock:
            rule = self._outcomes
            processing_s, cancel_s = self.batch_processing_s, self.batch_cancel_s
            not_found = self.not_found_after_create
            batch_id = f"msgbatch_fake{next(self._batch_ids):012d}"
        created = time.time()
        items: list[BatchItem] = []
        for index, request in enumerate(requests):
            custom_id, params = request["custom_id"], request["params"]
            outcome = rule(custom_id, params) if rule is not None else None
            finishes_at = created + processing_s * (index + 1) / len(requests)
            items.append(BatchItem(custom_id, params, self._item_result(outcome, params), finishes_at))
        batch = FakeBatch(batch_id, items, created, processing_s, cancel_s, not_found_left=not_found)
        with self._lock:
            self.batches[batch_id] = batch
        return self._batch_answer(batch)

    def _item_result(self, outcome: str | None, params: dict[str, Any]) -> dict[str, Any]:
        if outcome is None:
            number = next(self._ids)
            reply = self._next_reply(params)
            payload = self._message(reply, params, number)
            if reply.status == 200 and payload.get("type") == "message":
                return {"type": "succeeded", "message": payload}
            return {"type": "errored", "error": payload}
        if outcome in BATCH_OUTCOMES:
            return {"type": outcome}
        kind, _, error_type = outcome.partition(":")
        if kind != "errored" or not error_type:
            raise ValueError(
                f"batch_outcomes: {outcome!r} is not None, 'errored:<error type>', 'expired' or 'canceled'"
            )
        return {
            "type": "errored",
            "error": {
                "type": "error",
                "error": {"type": error_type, "message": f"fake server: scripted {error_type}"},
                "request_id": None,
            },
        }

    def _batch_answer(self, batch: FakeBatch) -> _Answer:
        return _json_answer(200, batch.wire(self.base_url, time.time()))

    def _find_batch(self, batch_id: str) -> FakeBatch | None:
        with self._lock:
            batch = self.batches.get(batch_id)
        return None if batch is None or batch.deleted else batch

    def _batch_route(self, method: str, parts: list[str], query: dict[str, list[str]]) -> _Answer:
        """parts: the path after /v1/messages/batches, split on '/'."""
        if not parts:
            if method == "GET":
                return self._list_batches(query)
            return _not_found(method, "/v1/messages/batches")
        batch = self._find_batch(parts[0])
        if batch is None:
            return _error_answer(404, "not_found_error", f"message batch {parts[0]} not found")
        rest = parts[1:]
        if method == "GET" and not rest:
            with self._lock:
                hidden = batch.not_found_left > 0
                batch.not_found_left = max(0, batch.not_found_left - 1)
            if hidden:
                return _error_answer(404, "not_found_error", f"message batch {batch.id} not found")
            return self._batch_answer(batch)
        if method == "GET" and rest == ["results"]:
            if batch.status(time.time()) != "ended":
                return _error_answer(
                    400, "invalid_request_error", f"message batch {batch.id} has not finished processing yet"
                )
            lines = "".join(json.dumps(line) + "\n" for line in batch.results())
            return _Answer(200, lines.encode("utf-8"), content_type="application/binary")
        if method == "POST" and rest == ["cancel"]:
            with self._lock:
                now = time.time()
                if batch.status(now) == "ended":
                    return _error_answer(
                        400, "invalid_request_error", f"message batch {batch.id} has ended: nothing to cancel"
                    )
                if batch.cancel_initiated_at is None:
                    batch.cancel_initiated_at = now
            return _json_answer(200, batch.wire(self.base_url, now, canceling=True))
        if method == "DELETE" and not rest:
            if batch.status(time.time()) != "ended":
                return _error_answer(
                    400,
                    "invalid_request_error",
                    f"message batch {batch.id} is still processing: cancel it first",
                )
            with self._lock:
                batch.deleted = True
            return _json_answer(200, {"id": batch.id, "type": "message_batch_deleted"})
        return _not_found(method, "/v1/messages/batches/" + "/".join(parts))

    def _list_batches(self, query: dict[str, list[str]]) -> _Answer:
        limit = int(query.get("limit", ["20"])[0])
        with self._lock:
            newest_first = [b for b in reversed(self.batches.values()) if not b.deleted]
        ids = [b.id for b in newest_first]
        start, stop = 0, len(newest_first)
        if "after_id" in query and query["after_id"][0] in ids:
            start = ids.index(query["after_id"][0]) + 1
        if "before_id" in query and query["before_id"][0] in ids:
            stop = ids.index(query["before_id"][0])
            start = max(start, stop - limit)
        page = newest_first[start : min(stop, start + limit)]
        now = time.time()
        return _json_answer(
            200,
            {
                "data": [b.wire(self.base_url, now) for b in page],
                "has_more": start + len(page) < stop,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            },
        )

    # -- serving -------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        headers = {k.lower(): v for k, v in handler.headers.items()}
        url = urlsplit(handler.path)
        with self._lock:
            self.requests.append(RecordedRequest(handler.path, headers, body, method))
            number = next(self._ids)
        if url.path == "/v1/messages" and method == "POST":
            reply, payload = self._messages(body, number)
            answer = _Answer(reply.status, json.dumps(payload).encode("utf-8"), headers=reply.headers)
        elif url.path == "/v1/messages/batches" and method == "POST":
            answer = self._create_batch(body, length)
        elif url.path == "/v1/messages/batches" or url.path.startswith("/v1/messages/batches/"):
            parts = [p for p in url.path[len("/v1/messages/batches") :].split("/") if p]
            answer = self._batch_route(method, parts, parse_qs(url.query))
        else:
            answer = _not_found(method, handler.path)
        if answer.content_type == "application/json" and answer.status >= 400:
            answer = _with_request_id(answer, number)
        try:
            handler.send_response(answer.status)
            handler.send_header("content-type", answer.content_type)
            handler.send_header("content-length", str(len(answer.payload)))
            handler.send_header("request-id", f"req_fake_{number:04d}")
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(answer.payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                fake._serve(self, "POST")

            def do_GET(self) -> None:
                fake._serve(self, "GET")

            def do_DELETE(self) -> None:
                fake._serve(self, "DELETE")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


def _json_answer(status: int, payload: dict[str, Any]) -> _Answer:
    return _Answer(status, json.dumps(payload).encode("utf-8"))


def _error_answer(status: int, kind: str, message: str) -> _Answer:
    reply = error(status, kind, message)
    return _json_answer(status, dict(reply.body or {}))


def _not_found(method: str, path: str) -> _Answer:
    return _error_answer(404, "not_found_error", f"fake server: no route {method} {path}")


def _with_request_id(answer: _Answer, number: int) -> _Answer:
    payload = json.loads(answer.payload)
    if isinstance(payload, dict) and payload.get("type") == "error":
        payload["request_id"] = f"req_fake_{number:04d}"
    return _Answer(answer.status, json.dumps(payload).encode("utf-8"), answer.content_type, answer.headers)


# -- a synthetic channel: answers the pipeline's question and answer prompts ---------------------

_WORD = re.compile(r"[a-z]+")
_N_QUESTIONS = re.compile(r"\bWrite (\d+) questions\b")
_EXCERPT = re.compile(r'"""\n(.*?)\n"""', re.DOTALL)
_TITLE = re.compile(r'Channel video: "(.*?)"')
_NUMBERED = re.compile(r"^(\d+)\. (.+)$", re.MULTILINE)
# Words that would make a question or answer refer to the recording, or look like a caption artifact.
_EXCLUDED = frozenset(
    {"video", "videos", "transcript", "transcripts", "excerpt", "excerpts", "speaker", "speakers", "host"}
    | {"hosts", "clip", "clips", "episode", "episodes", "recording", "music", "applause", "laughter"}
)
# Words for an excerpt too short to build from.
_FILLER = ["flour", "water", "salt", "starter", "dough", "oven", "crust", "crumb", "proof", "fold"]
_FILLER += ["shape", "score", "bake", "rest", "cool", "slice", "temperature", "timing", "hydration"]
_QUESTION_TEMPLATES = (
    "How do {a} and {b} change {c}?",
    "What goes wrong with {a} when {b} is {c}?",
    "Why does {a} matter for {b} and {c}?",
    "When should I use {a} with {b} and {c}?",
    "How can I tell if {a} {b} is {c} enough?",
    "What is the best way to handle {a}, {b} and {c}?",
    "How much {a} do I need for {b} and {c}?",
    "How long should {a} take with {b} and {c}?",
)
_ANSWER_MIN_CHARS = 300
_ANSWER_MAX_CHARS = 500


def _text_of(content: Any) -> str:
    """The text of a ``system`` or message ``content``: a string or a list of text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(block.get("text", "")) for block in content if isinstance(block, dict))
    return ""


def _request_text(body: dict[str, Any]) -> str:
    parts = [_text_of(body.get("system"))]
    parts.extend(_text_of(message.get("content")) for message in body.get("messages") or [])
    return "\n".join(parts)


def _first_user_text(body: dict[str, Any]) -> str:
    for message in body.get("messages") or []:
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _vocabulary(text: str) -> list[str]:
    """Distinct content words of ``text`` in order of appearance (at least 4 letters)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if len(word) >= 4 and word not in STOPWORDS and word not in _EXCLUDED:
            seen.setdefault(word, None)
    return list(seen) or list(_FILLER)


def _tokens(text: str) -> list[str]:
    words = [w for w in _WORD.findall(text.lower()) if w not in _EXCLUDED]
    return words if len(words) >= 12 else words + list(_FILLER)


def _excerpt(user: str) -> str:
    match = _EXCERPT.search(user)
    return match.group(1) if match else user


def synthetic_questions(excerpt: str, n_questions: int) -> list[str]:
    """``n_questions`` distinct questions built from the excerpt's words, the same for the same text."""
    words = _vocabulary(excerpt)
    offset = _seed(excerpt)
    questions: list[str] = []
    seen: set[str] = set()
    attempt = 0
    while len(questions) < n_questions:
        start = (offset + 3 * attempt) % len(words)
        a, b, c = (words[(start + k) % len(words)] for k in range(3))
        template = _QUESTION_TEMPLATES[(offset + attempt) % len(_QUESTION_TEMPLATES)]
        question = template.format(a=a, b=b, c=c)
        question = question[0].upper() + question[1:]
        if attempt >= 3 * len(words) * len(_QUESTION_TEMPLATES):
            question = f"{question[:-1]} at step {attempt}?"  # a tiny vocabulary: keep them distinct
        if question.lower() not in seen:
            seen.add(question.lower())
            questions.append(question)
        attempt += 1
    return questions


def synthetic_answer(excerpt: str, question: str, index: int) -> str:
    """A 300-500 character first-person answer made of the excerpt's words, the same for the same input."""
    tokens = _tokens(excerpt)
    position = _seed(f"{index}\n{question}\n{excerpt}") % len(tokens)
    subject = ", ".join(w for w in _WORD.findall(question.lower()) if w not in STOPWORDS)
    sentences = [f"I keep it simple with {subject}."]
    length = len(sentences[0])
    while length < _ANSWER_MIN_CHARS:
        size = 10 + (position % 5)
        words = [tokens[(position + k) % len(tokens)] for k in range(size)]
        position += size
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + "."
        sentences.append(sentence)
        length += 1 + len(sentence)
    answer = " ".join(sentences)
    if len(answer) > _ANSWER_MAX_CHARS:
        answer = answer[: _ANSWER_MAX_CHARS - 1].rsplit(" ", 1)[0].rstrip(",") + "."
    return answer


def _schema_kind(body: dict[str, Any]) -> str | None:
    schema = ((body.get("output_config") or {}).get("format") or {}).get("schema") or {}
    properties = schema.get("properties") or {}
    for kind in ("questions", "answers"):
        if properties.get(kind, {}).get("type") == "array":
            return kind
    return None


def channel_responder(body: dict[str, Any]) -> Reply:
    """Answer a pass 1 (questions) or pass 2 (answers) request of the pipeline with synthetic JSON.

    The kind comes from the output schema (``output_config.format.schema``); the counts and the words
    come from the first user turn (``Write N questions``, the excerpt between triple quotes, the
    numbered questions), so a re-ask gets the same reply. Usage: input tokens = request text / 4,
    output tokens = reply text / 4.
    """
    kind = _schema_kind(body)
    user = _first_user_text(body)
    excerpt = _excerpt(user)
    data: dict[str, Any]
    if kind == "questions":
        match = _N_QUESTIONS.search(user)
        if match is None:
            return error(
                400, "invalid_request_error", "channel_responder: no 'Write N questions' in the prompt"
            )
        data = {"questions": synthetic_questions(excerpt, int(match.group(1)))}
    elif kind == "answers":
        listed = user[user.find('"""', user.find('"""') + 3) + 3 :] if '"""' in user else user
        numbered = _NUMBERED.findall(listed)
        if not numbered:
            return error(400, "invalid_request_error", "channel_responder: no numbered questions ('1. ...')")
        data = {
            "answers": [
                {
                    "index": int(number),
                    "answerable": True,
                    "answer": synthetic_answer(excerpt, question, int(number)),
                    "reason": "",
                }
                for number, question in numbered
            ]
        }
    else:
        return error(
            400,
            "invalid_request_error",
            "channel_responder: output_config.format.schema has no 'questions' or 'answers' array",
        )
    text = json.dumps(data)
    return ok(data, input_tokens=max(1, len(_request_text(body)) // 4), output_tokens=max(1, len(text) // 4))


def client_settings(
    server: FakeAnthropic, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, **llm: Any
) -> LLMSettings:
    """LLM settings that send to ``server`` with a test key (the variables that would redirect the SDK
    removed), a timeout of 10 s and ``cache_dir``; ``llm`` overrides keys of the ``llm`` section."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    values: dict[str, Any] = {"backend": "anthropic", "base_url": server.base_url, "timeout_s": 10}
    values.update(cache_dir=str(cache_dir), **llm)
    return settings_from(LLMSettings, section_config("llm", values), "llm")


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    """A started fake Anthropic API; stopped after the test."""
    with FakeAnthropic() as server:
        yield server
