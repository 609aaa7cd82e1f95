"""Settings of the LLM layer: the ``llm`` section of the config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tubetune.bundled import bundled_gguf, bundled_name
from tubetune.errors import ConfigError

Backend = Literal["anthropic", "llama_cpp"]
Mode = Literal["online", "batch"]


@dataclass(frozen=True)
class LLMSettings:
    """The config section ``llm`` (config.schema.yaml holds every key's default and bounds).

    Built with ``settings_from(LLMSettings, config["llm"], "llm")``.
    """

    backend: Backend
    model: str
    gguf: str | None
    n_ctx: int
    base_url: str | None
    cache_dir: str
    seed_cache_dirs: tuple[str, ...]
    max_tokens: int
    max_reasks: int
    max_retries: int
    timeout_s: float
    mode: Mode
    concurrency: int
    rate_limit_wait_s: float
    batch_poll_s: float
    batch_max_requests: int
    batch_max_mb: float
    prices: dict[str, dict[str, float]]
    cache_min_tokens: dict[str, int]

    def __post_init__(self) -> None:
        if self.backend == "llama_cpp" and not self.gguf:
            raise ConfigError(
                "config error: llm.backend is llama_cpp but llm.gguf is not set: give a GGUF file path"
            )

    @property
    def batch(self) -> bool:
        """True when cache misses go out as Message Batches (anthropic backend, ``mode: batch``)."""
        return self.mode == "batch" and self.backend == "anthropic"

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
        name = bundled_name(self.gguf)
        return Path(self.gguf) if name is None else bundled_gguf(name, "llm.gguf")

    def cache_dirs(self) -> tuple[str, ...]:
        """The cache directories searched, in order (writable first)."""
        return (self.cache_dir, *self.seed_cache_dirs)
