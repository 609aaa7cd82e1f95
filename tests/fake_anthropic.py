"""A fake Anthropic Messages API: a real HTTP server on 127.0.0.1 with a scripted queue of replies.

Point the real ``anthropic`` SDK at ``server.base_url``. Each POST /v1/messages takes the next
scripted :class:`Reply` (an unscripted call gets a 400 that names the problem, so it fails loudly)
and is recorded in ``server.requests`` with its headers and JSON body.

    server.script(ok({"questions": []}), rate_limited(), server_error())
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

# retry-after-ms takes precedence over retry-after in the SDK; 1 ms keeps its backoff short.
# (retry-after: 0 alone is not enough: the SDK ignores a zero wait and backs off 0.5 s, 1 s, ...)
FAST_RETRY_HEADERS = {"retry-after": "0", "retry-after-ms": "1"}


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


class FakeAnthropic:
    """The server. Use as a context manager or through the ``fake_anthropic`` fixture."""

    def __init__(self) -> None:
        self._replies: deque[Reply] = deque()
        self._repeat: Reply | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.requests: list[RecordedRequest] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def script(self, *replies: Reply) -> None:
        """Queue replies, served in order, one per request."""
        with self._lock:
            self._replies.extend(replies)

    def always(self, reply: Reply | None) -> None:
        """Serve ``reply`` to every request once the queue is empty (None: back to 'unscripted')."""
        with self._lock:
            self._repeat = reply

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._replies)

    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/messages"]

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

    # -- serving -------------------------------------------------------------------------------

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
            if self._repeat is not None:
                return self._repeat
        return error(400, "invalid_request_error", f"fake server: no reply scripted for {body.get('model')}")

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append(RecordedRequest(path=handler.path, headers=headers, body=body))
            number = next(self._ids)
        if handler.path != "/v1/messages":
            reply = error(404, "not_found_error", f"fake server: no route {handler.path}")
        else:
            reply = self._next_reply(body)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        payload = dict(reply.body or {})
        if payload.get("type") == "message":
            payload["id"] = f"msg_fake_{number:04d}"
            payload["model"] = body.get("model", "unknown")
        elif payload.get("type") == "error":
            payload["request_id"] = f"req_fake_{number:04d}"
        data = json.dumps(payload).encode("utf-8")
        try:
            handler.send_response(reply.status)
            handler.send_header("content-type", "application/json")
            handler.send_header("content-length", str(len(data)))
            handler.send_header("request-id", f"req_fake_{number:04d}")
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): nothing to answer

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                fake._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    """A started fake Anthropic API; stopped after the test."""
    with FakeAnthropic() as server:
        yield server
