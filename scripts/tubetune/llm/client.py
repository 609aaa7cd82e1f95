"""The one entry point of every LLM step: request, then cache, then backend, then checked JSON.

``LLMClient.complete_json(request)`` looks the request up in the response cache (the writable
directory first, then the read-only seeds). On a miss it calls the backend and stores the reply
at once, before checking it, so nothing paid for is lost when a run is killed. The reply must
parse as JSON, match ``request.output_schema`` and pass the caller's optional ``validate``
callback; otherwise the model is re-asked (the original request followed by its bad reply and
the reason), each re-ask cached under its own key, so a rerun replays the whole chain with zero
calls. When every re-ask fails, :class:`InvalidOutputError` tells the caller to quarantine.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from jsonschema.protocols import Validator
from tqdm import tqdm

from tubetune.errors import TubetuneError, one_line
from tubetune.jsonio import canonical_json
from tubetune.llm.backends import (
    ANTHROPIC_KEY_ENV,
    REASON_LIMIT,
    AnthropicBackend,
    Backend,
    BackendError,
    Completion,
    LlamaCppBackend,
    MissingCredentialsError,
)
from tubetune.llm.cache import CachedResponse, ResponseCache
from tubetune.llm.request import LLMRequest, Message
from tubetune.llm.settings import LLMSettings

__all__ = [
    "REASK_TEMPLATE",
    "BackendError",
    "Completion",
    "InvalidOutputError",
    "LLMClient",
    "LLMResult",
    "MissingCredentialsError",
    "Resolution",
    "parse_json",
    "schema_error",
]

logger = logging.getLogger(__name__)

REASK_TEMPLATE = (
    "Your previous reply was not valid: {reason}. "
    "Reply again with only the JSON object that matches the schema."
)
EMPTY_REPLY = "(empty reply)"

ExtraCheck = Callable[[Any], None]


class InvalidOutputError(TubetuneError):
    """The model's output stayed invalid after every re-ask; the caller quarantines the item."""

    def __init__(self, reason: str, texts: Sequence[str], key: str = "") -> None:
        self.reason = reason
        self.texts = list(texts)
        self.key = key
        super().__init__(f"LLM output still invalid after {len(self.texts)} attempt(s): {reason}")


@dataclass(frozen=True)
class LLMResult:
    """A checked answer.

    ``usage`` sums the token counts of the backend calls made for this result now (all zero when
    the whole chain came from the cache); ``calls`` counts those calls; ``attempts`` counts the
    replies looked at (1 + re-asks); ``key`` is the cache key of the request whose reply was valid.
    """

    data: Any
    text: str
    usage: dict[str, int]
    calls: int
    attempts: int
    key: str
    keys: tuple[str, ...] = field(default=())

    @property
    def cached(self) -> bool:
        return self.calls == 0


@dataclass(frozen=True)
class Resolution:
    """Where a request's re-ask chain stands in the cache: exactly one of the three is set.

    ``result``: a valid reply was found; ``error``: every reply of the chain was invalid;
    ``missing``: the next request of the chain has no cached reply (``attempts`` replies looked at).
    """

    result: LLMResult | None = None
    error: InvalidOutputError | None = None
    missing: LLMRequest | None = None
    attempts: int = 0


def parse_json(text: str) -> Any:
    """Parse a reply as JSON (a Markdown code fence around it is tolerated); ValueError with the reason."""
    stripped = text.strip()
    if stripped.startswith("```"):
        lines = stripped.splitlines()
        body = lines[1:-1] if len(lines) > 1 and lines[-1].strip() == "```" else lines[1:]
        stripped = "\n".join(body).strip()
    if not stripped:
        raise ValueError("the reply was empty, expected a JSON object")
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _json_path(error: jsonschema.ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def schema_error(validator: Validator, data: Any) -> str | None:
    """The most relevant reason ``data`` does not match the validator's schema, or None."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return None
    return one_line(f"{error.message} at {_json_path(error)}", REASON_LIMIT)


class LLMClient:
    """Cached, checked JSON completions. One per step; thread-safe."""

    def __init__(
        self, settings: LLMSettings, cache: ResponseCache | None = None, backend: Backend | None = None
    ) -> None:
        """``cache`` defaults to the settings' directories; ``backend`` (e.g. a loaded model shared
        between two clients) defaults to one built from the settings on the first cache miss."""
        self.settings = settings
        self.cache = cache or ResponseCache(settings.cache_dir, settings.seed_cache_dirs)
        self._backend: Backend | None = backend
        self._lock = threading.Lock()
        self._validators: dict[str, Validator] = {}
        self.counters: Counter[str] = Counter()

    # -- building requests ---------------------------------------------------------------------

    def new_request(
        self,
        system: str,
        messages: str | Sequence[Message],
        output_schema: Mapping[str, Any],
        *,
        max_tokens: int | None = None,
    ) -> LLMRequest:
        """A request for this client's backend and model (``messages`` may be one user text)."""
        turns = (Message("user", messages),) if isinstance(messages, str) else tuple(messages)
        return LLMRequest(
            backend=self.settings.backend,
            model=self.settings.request_model,
            system=system,
            messages=turns,
            output_schema=dict(output_schema),
            max_tokens=max_tokens if max_tokens is not None else self.settings.max_tokens,
        )

    # -- the main call -------------------------------------------------------------------------

    def complete_json(self, request: LLMRequest, validate: ExtraCheck | None = None) -> LLMResult:
        """The reply to ``request`` as JSON that matches ``request.output_schema`` (and ``validate``).

        ``validate`` gets the parsed JSON and raises ValueError with a reason to reject it.
        Raises InvalidOutputError (after ``max_reasks`` re-asks), BackendError (a call failed for
        good), MissingCredentialsError (a miss with the anthropic backend and no API key).
        """
        resolution = self._walk(request, validate, call=True)
        if resolution.error is not None:
            raise resolution.error
        assert resolution.result is not None  # a walk that may call always ends in a result or an error
        return resolution.result

    def resolve(self, request: LLMRequest, validate: ExtraCheck | None = None) -> Resolution:
        """Walk the re-ask chain of ``request`` through the cache alone, without any backend call.

        The result is what :meth:`complete_json` would return from the cache, the error it would
        raise, or the next request of the chain whose reply is not cached yet (``missing``).
        Counters are not touched: planning a batch or an estimate is not a run.
        """
        return self._walk(request, validate, call=False)

    def complete_all(
        self,
        items: Sequence[tuple[LLMRequest, ExtraCheck | None]],
        desc: str,
        unit: str = "request",
    ) -> list[LLMResult | InvalidOutputError | BackendError]:
        """:meth:`complete_json` for every item, up to ``llm.concurrency`` at a time (llama_cpp: one).

        The outcomes come back in the order of ``items``: the result, or the InvalidOutputError /
        BackendError that the caller quarantines. MissingCredentialsError stops everything at once.
        """
        workers = 1 if self.settings.backend == "llama_cpp" else min(self.settings.concurrency, len(items))
        outcomes: list[LLMResult | InvalidOutputError | BackendError | None] = [None] * len(items)

        def one(index: int) -> None:
            request, validate = items[index]
            try:
                outcomes[index] = self.complete_json(request, validate)
            except (InvalidOutputError, BackendError) as exc:
                outcomes[index] = exc

        with tqdm(total=len(items), desc=desc, unit=unit, disable=not items) as bar:
            if workers <= 1:
                for index in range(len(items)):
                    one(index)
                    bar.update()
            else:
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm") as pool:
                    futures = [pool.submit(one, index) for index in range(len(items))]
                    try:
                        for future in as_completed(futures):
                            future.result()  # re-raises MissingCredentialsError and bugs
                            bar.update()
                    except BaseException:
                        for future in futures:
                            future.cancel()
                        raise
        done = [outcome for outcome in outcomes if outcome is not None]
        assert len(done) == len(items)
        return done

    def _walk(self, request: LLMRequest, validate: ExtraCheck | None, *, call: bool) -> Resolution:
        validator = self._validator(request.output_schema)
        current = request
        texts: list[str] = []
        keys: list[str] = []
        usage: Counter[str] = Counter()
        calls = 0
        reason = ""
        for attempt in range(1, self.settings.max_reasks + 2):
            if call:
                response, called = self._fetch(current)
            else:
                hit = self.cache.get(current)
                if hit is None:
                    return Resolution(missing=current, attempts=attempt - 1)
                response, called = hit, False
            keys.append(response.key)
            texts.append(response.text)
            if called:
                calls += 1
                usage.update(response.usage)
            try:
                data = self._check(response, validator, validate)
            except ValueError as exc:
                reason = one_line(str(exc), REASON_LIMIT)
                if call:
                    logger.info(
                        "request %s: invalid reply (attempt %d): %s", current.key()[:12], attempt, reason
                    )
                if attempt <= self.settings.max_reasks:
                    if call:
                        self._count("reasks")
                    current = reask_request(request, response.text, reason)
                continue
            if call:
                self._count("valid")
            result = LLMResult(
                data=data,
                text=response.text,
                usage=dict(usage),
                calls=calls,
                attempts=attempt,
                key=response.key,
                keys=tuple(keys),
            )
            return Resolution(result=result, attempts=attempt)
        if call:
            self._count("invalid")
        return Resolution(error=InvalidOutputError(reason, texts, key=request.key()), attempts=len(texts))

    # -- statistics ----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters of this client: requests, cache_hits, calls, reasks, valid, invalid, token counts."""
        with self._lock:
            return dict(self.counters)

    def usage_record(self, pass_name: str, job: str, wall_s: float) -> dict[str, Any]:
        """What this client's calls cost, as one record of the LLM ledger (results/llm/ledger.json)."""
        s = self.stats()
        return {
            "pass": pass_name,
            "mode": "batch" if self.settings.batch else "online",
            "backend": self.settings.backend,
            "model": self.settings.request_model,
            "job": job,
            **{
                name: int(s.get(name, 0))
                for name in (
                    "requests",
                    "cache_hits",
                    "calls",
                    "reasks",
                    "valid",
                    "invalid",
                    "batches",
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                )
            },
            "wall_s": round(wall_s, 3),
        }

    def log_summary(self, level: int = logging.INFO) -> str:
        """Log (and return) one line summing up what this client did."""
        s = self.stats()
        line = (
            f"LLM {self.settings.backend}/{self.settings.request_model}: {s.get('requests', 0)} requests, "
            f"{s.get('cache_hits', 0)} cache hits, {s.get('calls', 0)} backend calls, "
            f"{s.get('reasks', 0)} re-asks, {s.get('valid', 0)} valid, {s.get('invalid', 0)} invalid; "
            f"tokens in {s.get('input_tokens', 0)}, out {s.get('output_tokens', 0)}, "
            f"cache read {s.get('cache_read_input_tokens', 0)}, "
            f"cache write {s.get('cache_creation_input_tokens', 0)}"
        )
        logger.log(level, "%s", line)
        return line

    # -- internals -----------------------------------------------------------------------------

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] += amount

    def _validator(self, schema: Mapping[str, Any]) -> Validator:
        text = canonical_json(schema)
        with self._lock:
            validator = self._validators.get(text)
            if validator is None:
                cls = jsonschema.validators.validator_for(schema)
                cls.check_schema(schema)
                validator = cls(schema)
                self._validators[text] = validator
            return validator

    @staticmethod
    def _check(response: CachedResponse, validator: Validator, validate: ExtraCheck | None) -> Any:
        try:
            data = parse_json(response.text)
        except ValueError as exc:
            if response.stop_reason in ("max_tokens", "length"):
                raise ValueError(f"the reply was cut off at the output token limit ({exc})") from None
            raise
        problem = schema_error(validator, data)
        if problem is not None:
            raise ValueError(f"does not match the schema: {problem}")
        if validate is not None:
            validate(data)
        return data

    def _fetch(self, request: LLMRequest) -> tuple[CachedResponse, bool]:
        """The reply to ``request``: from the cache, or from the backend (stored before returning)."""
        self._count("requests")
        hit = self.cache.get(request)
        if hit is not None:
            self._count("cache_hits")
            logger.debug("request %s: cache hit", hit.key[:12])
            return hit, False
        key = request.key()
        backend = self._get_backend(request)
        completion = backend.complete(request)
        response = CachedResponse(
            key=key, text=completion.text, usage=dict(completion.usage), stop_reason=completion.stop_reason
        )
        path = self.cache.put(request, response)
        with self._lock:
            self.counters["calls"] += 1
            self.counters.update(completion.usage)
        logger.info(
            "request %s: %s call, %s tokens in, %s out, stop %s -> %s",
            key[:12],
            backend.name,
            completion.usage.get("input_tokens", "?"),
            completion.usage.get("output_tokens", "?"),
            completion.stop_reason,
            path,
        )
        return response, True

    def _get_backend(self, request: LLMRequest) -> Backend:
        if request.backend != self.settings.backend:
            raise ValueError(
                f"request for backend {request.backend!r} sent to a {self.settings.backend} client"
            )
        with self._lock:
            if self._backend is None:
                self._backend = self._make_backend(request)
            return self._backend

    def _make_backend(self, request: LLMRequest) -> Backend:
        if self.settings.backend == "llama_cpp":
            return LlamaCppBackend(self.settings)
        api_key = os.environ.get(ANTHROPIC_KEY_ENV, "").strip()
        if not api_key:
            raise MissingCredentialsError(
                f"no cached LLM response for request {request.key()} "
                f"(searched {', '.join(self.cache_dirs())}) and {ANTHROPIC_KEY_ENV} is not set: "
                f"set {ANTHROPIC_KEY_ENV}, or choose llm.backend: llama_cpp with llm.gguf, "
                "or restore the cache"
            )
        return AnthropicBackend(self.settings, api_key)

    def cache_dirs(self) -> list[str]:
        """The cache directories searched, in order."""
        return [str(self.cache.directory), *(str(s) for s in self.cache.seeds)]


def reask_request(original: LLMRequest, bad_text: str, reason: str) -> LLMRequest:
    """The original request followed by the bad reply and the reason it was rejected."""
    return original.followed_by(
        Message("assistant", bad_text if bad_text.strip() else EMPTY_REPLY),
        Message("user", REASK_TEMPLATE.format(reason=reason)),
    )
