"""LLM backends: Claude through the ``anthropic`` SDK, or a local GGUF through llama-cpp-python.

A backend turns one :class:`LLMRequest` into one :class:`Completion` (the raw text and its token
usage). Both ask for JSON constrained by ``request.output_schema``; checking the JSON is the
client's job. Both are built lazily: a run served entirely from the cache never constructs the
SDK client nor loads a model.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from tubetune.cores import LlamaThreads
from tubetune.errors import ConfigError, TubetuneError, one_line
from tubetune.llm.request import LLMRequest
from tubetune.llm.settings import LLMSettings

if TYPE_CHECKING:
    import anthropic
    import llama_cpp

logger = logging.getLogger(__name__)

ANTHROPIC_KEY_ENV = "ANTHROPIC_API_KEY"
RETRYABLE_STATUS = frozenset({408, 409, 429})
# Rate limited / overloaded: after the SDK's own retries, every thread of the job waits and tries again.
RATE_LIMIT_STATUS = frozenset({429, 529})
RATE_LIMIT_MAX_PAUSE_S = 60.0
#: Longest reason (characters) an error message quotes from the API, llama.cpp or the model.
REASON_LIMIT = 300


class BackendError(TubetuneError):
    """A backend call failed for good (after the SDK's own retries); the caller may quarantine."""

    def __init__(self, reason: str, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status_code = status_code


class MissingCredentialsError(TubetuneError):
    """A cache miss needs the API, and there is no API key."""


@dataclass(frozen=True)
class Completion:
    """What one backend call returned."""

    text: str
    usage: dict[str, int] = field(default_factory=dict)
    stop_reason: str | None = None


class Backend(Protocol):
    name: str

    def complete(self, request: LLMRequest) -> Completion: ...


class AnthropicBackend:
    """Claude through the Messages API, JSON output constrained by ``output_config`` json_schema."""

    name = "anthropic"

    def __init__(self, settings: LLMSettings, api_key: str) -> None:
        self.settings = settings
        self._api_key = api_key
        self._client: anthropic.Anthropic | None = None
        self._lock = threading.Lock()
        self._gate = RateGate()

    def client(self) -> anthropic.Anthropic:
        with self._lock:
            if self._client is None:
                import anthropic

                self._client = anthropic.Anthropic(
                    api_key=self._api_key,
                    base_url=self.settings.base_url,
                    max_retries=self.settings.max_retries,
                    timeout=self.settings.timeout_s,
                )
                _warn_if_deprecated(self.settings.model)
                logger.info(
                    "anthropic client ready (base_url %s, max_retries %d, timeout %.0f s)",
                    self._client.base_url,
                    self.settings.max_retries,
                    self.settings.timeout_s,
                )
            return self._client

    def complete(self, request: LLMRequest) -> Completion:
        import anthropic

        client = self.client()
        params = message_params(request, self.settings)
        waited = 0.0
        while True:
            self._gate.wait()
            try:
                message = client.messages.create(**params)
            except anthropic.APIStatusError as exc:
                if exc.status_code in RATE_LIMIT_STATUS:
                    pause = retry_after_s(exc.response.headers, self._gate.failures + 1)
                    if waited + pause <= self.settings.rate_limit_wait_s:
                        waited += pause
                        self._gate.pause(pause)
                        logger.info(
                            "request %s: HTTP %d, all requests wait %.1f s (%.0f s of llm.rate_limit_wait_s "
                            "%.0f s used)",
                            request.key()[:12],
                            exc.status_code,
                            pause,
                            waited,
                            self.settings.rate_limit_wait_s,
                        )
                        continue
                raise BackendError(self._status_reason(exc), exc.status_code) from exc
            except anthropic.APITimeoutError as exc:
                raise BackendError(
                    f"anthropic: no answer from {client.base_url} within {self.settings.timeout_s:g} s "
                    f"(after {self.settings.max_retries} retries; raise llm.timeout_s?)"
                ) from exc
            except anthropic.APIConnectionError as exc:
                cause = exc.__cause__ or exc
                raise BackendError(
                    f"anthropic: cannot connect to {client.base_url} (after {self.settings.max_retries} "
                    f"retries): {one_line(str(cause), REASON_LIMIT)}"
                ) from exc
            except anthropic.APIError as exc:
                raise BackendError(f"anthropic: {one_line(exc.message, REASON_LIMIT)}") from exc
            self._gate.succeeded()
            text = "".join(block.text for block in message.content if block.type == "text")
            return Completion(
                text=text, usage=anthropic_usage(message.usage), stop_reason=message.stop_reason
            )

    def _status_reason(self, exc: anthropic.APIStatusError) -> str:
        retried = exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
        after = f" after {self.settings.max_retries} retries" if retried else ""
        kind = f" {exc.type}" if exc.type else ""
        detail = exc.api_message or exc.message
        hint = f" (check {ANTHROPIC_KEY_ENV})" if exc.status_code in (401, 403) else ""
        return f"anthropic: HTTP {exc.status_code}{kind}{after}: {one_line(detail, REASON_LIMIT)}{hint}"


class RateGate:
    """A pause shared by the threads of one backend: after a 429/529 no thread sends until it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resume_at = 0.0
        self.failures = 0

    def wait(self) -> None:
        while True:
            with self._lock:
                delay = self._resume_at - time.monotonic()
            if delay <= 0:
                return
            time.sleep(delay)

    def pause(self, seconds: float) -> None:
        with self._lock:
            self.failures += 1
            self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    def succeeded(self) -> None:
        with self._lock:
            self.failures = 0


def retry_after_s(headers: Mapping[str, str], failures: int) -> float:
    """The wait a 429/529 answer asks for (retry-after-ms, then retry-after in seconds), else an
    exponential backoff from 1 s by the number of failures in a row; at most 60 s."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds >= 0:
            return min(seconds, RATE_LIMIT_MAX_PAUSE_S)
    return min(2.0 ** (failures - 1), RATE_LIMIT_MAX_PAUSE_S)


def uses_prompt_cache(request: LLMRequest, settings: LLMSettings) -> bool:
    """True when the system prompt reaches the model's minimum cacheable prefix (llm.cache_min_tokens)."""
    minimum = settings.cache_min_tokens.get(request.model)
    if not minimum or not request.system:
        return False
    from tubetune.llm.cost import count_tokens

    return count_tokens(request.system) >= minimum


def message_params(request: LLMRequest, settings: LLMSettings) -> dict[str, Any]:
    """The Messages API parameters of ``request`` (online calls and Message Batches items alike).

    The system prompt goes as a text block with ``cache_control`` when it is long enough to be
    cached (:func:`uses_prompt_cache`); the request's cache key does not depend on it.
    """
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [m.to_dict() for m in request.messages],
        "output_config": {"format": {"type": "json_schema", "schema": wire_schema(request)}},
    }
    if request.system:
        if uses_prompt_cache(request, settings):
            params["system"] = [
                {"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}
            ]
        else:
            params["system"] = request.system
    return params


def wire_schema(request: LLMRequest) -> dict[str, Any]:
    """The request's schema in the subset the API enforces (the SDK's own ``transform_schema``).

    Constraints the API cannot enforce (minLength, maximum, minItems > 1, ...) move into the
    description, so the model still sees them; the client checks the full schema on every reply.
    """
    import anthropic

    try:
        return anthropic.transform_schema(copy.deepcopy(request.output_schema))
    except (ValueError, TypeError, KeyError) as exc:
        logger.warning("sending the output schema untransformed (%s)", one_line(str(exc), REASON_LIMIT))
        return request.output_schema


def _warn_if_deprecated(model: str) -> None:
    """Say so (once per client) when the SDK lists ``model`` as deprecated."""
    try:
        from anthropic.resources.messages.messages import DEPRECATED_MODELS
    except ImportError:  # pragma: no cover - the table moved in another SDK version
        return
    end_of_life = DEPRECATED_MODELS.get(model)
    if end_of_life:
        logger.warning("llm.model %s is deprecated by Anthropic (end of life %s)", model, end_of_life)


USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def anthropic_usage(usage: Any) -> dict[str, int]:
    """The token counts of a Messages API ``usage`` object (online reply or batch result)."""
    counts: dict[str, int] = {}
    for name in USAGE_FIELDS:
        value = getattr(usage, name, None)
        if isinstance(value, int):
            counts[name] = value
    return counts


class LlamaCppBackend:
    """A local GGUF through llama-cpp-python, JSON output constrained by a grammar from the schema.

    Greedy decoding (temperature 0, seed 0): the same request gives the same text. The model is
    loaded on the first call, once per backend; calls are serialised (a ``Llama`` is not thread-safe).
    Before each call the threads are set to the machine's cores minus those other processes keep busy
    (:class:`tubetune.cores.LlamaThreads`; the text does not depend on the thread count).
    """

    name = "llama_cpp"

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self._llama: llama_cpp.Llama | None = None
        self._lock = threading.Lock()
        self.threads = LlamaThreads(os.cpu_count() or 1)

    def _load(self) -> llama_cpp.Llama:
        if self._llama is None:
            path = self.settings.gguf_path()
            if not path.is_file():
                raise ConfigError(f"llm.gguf: file not found: {path}")
            from llama_cpp import Llama

            logger.info("loading %s (n_ctx %d)", path, self.settings.n_ctx)
            try:
                self._llama = Llama(model_path=str(path), n_ctx=self.settings.n_ctx, verbose=False, seed=0)
            except (ValueError, RuntimeError) as exc:
                reason = one_line(str(exc), REASON_LIMIT)
                raise ConfigError(f"llm.gguf: llama.cpp cannot load {path}: {reason}") from exc
        return self._llama

    def complete(self, request: LLMRequest) -> Completion:
        messages: list[dict[str, str]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend(m.to_dict() for m in request.messages)
        with self._lock:
            llama = self._load()
            self.threads.adjust(llama)
            try:
                result = llama.create_chat_completion(
                    messages=cast(Any, messages),
                    response_format={"type": "json_object", "schema": request.output_schema},
                    max_tokens=request.max_tokens,
                    temperature=0.0,
                    seed=0,
                )
            except (ValueError, RuntimeError) as exc:
                raise BackendError(f"llama_cpp: {one_line(str(exc), REASON_LIMIT)}") from exc
        response = cast(dict[str, Any], result)
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            usage={
                "input_tokens": int(usage.get("prompt_tokens", 0)),
                "output_tokens": int(usage.get("completion_tokens", 0)),
            },
            stop_reason=choice.get("finish_reason"),
        )
