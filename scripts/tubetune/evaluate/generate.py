"""Greedy answers to the test questions through llama-cpp-python on an exported GGUF.

The GGUF must carry its chat template (``tokenizer.chat_template`` metadata, written by the exporter):
without it llama-cpp-python silently falls back to the Llama-2 prompt format, which would make the
answers meaningless, so a GGUF without a template is refused.

Before each answer the threads are set to the job's threads minus the cores other processes keep
busy (:mod:`tubetune.cores`): with 2 threads and one core held by another process, llama.cpp drops
to a few tokens/s. The answers do not depend on the thread count (each output value of a llama.cpp
matmul is computed by one thread).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tubetune.cores import LlamaThreads
from tubetune.errors import InputFileError

logger = logging.getLogger(__name__)

Message = Mapping[str, str]


@dataclass(frozen=True)
class GenerationSettings:
    """llama.cpp answering: four keys of the ``evaluate:`` section and the job's threads, the most
    llama.cpp uses (built by :func:`tubetune.evaluate.run.generation_settings`)."""

    max_new_tokens: int
    seed: int
    n_ctx: int
    repeat_penalty: float
    n_threads: int


@dataclass(frozen=True)
class GeneratedAnswer:
    text: str
    finish_reason: str | None  # "stop" (end-of-turn token), "length" (max tokens) or None (error)
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    error: str | None = None
    threads: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 4),
            "threads": self.threads,
            "error": self.error,
        }


@dataclass
class GenerationRun:
    gguf: Path
    answers: list[GeneratedAnswer] = field(default_factory=list)
    load_seconds: float = 0.0

    @property
    def completion_tokens(self) -> int:
        return sum(a.completion_tokens for a in self.answers)

    @property
    def seconds(self) -> float:
        return sum(a.seconds for a in self.answers)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of answering (prompt processing included)."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else math.nan

    @property
    def threads_used(self) -> dict[str, int]:
        """Thread count -> answers generated with it."""
        return {str(k): v for k, v in sorted(Counter(a.threads for a in self.answers).items())}


def load_gguf(path: Path, settings: GenerationSettings, threads: int | None = None) -> Any:
    """A llama-cpp-python ``Llama`` on ``path`` with ``threads`` (default ``settings.n_threads``),
    answering with the GGUF's own chat template."""
    from llama_cpp import Llama

    if not Path(path).is_file():
        raise InputFileError(f"{path}: GGUF file not found")
    try:
        llm = Llama(
            model_path=str(path),
            n_ctx=settings.n_ctx,
            n_threads=threads or settings.n_threads,
            n_threads_batch=threads or settings.n_threads,
            seed=settings.seed,
            verbose=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise InputFileError(f"{path}: llama.cpp cannot load this GGUF ({exc})") from exc
    if "tokenizer.chat_template" not in llm.metadata:
        llm.close()
        raise InputFileError(
            f"{path}: the GGUF has no tokenizer.chat_template metadata; re-export it with the chat template"
        )
    return llm


def answer_one(llm: Any, messages: Sequence[Message], settings: GenerationSettings) -> GeneratedAnswer:
    """One greedy chat completion; a prompt that does not fit the context becomes a recorded error."""
    started = time.perf_counter()
    try:
        response = llm.create_chat_completion(
            messages=[dict(m) for m in messages],
            temperature=0.0,
            seed=settings.seed,
            max_tokens=settings.max_new_tokens,
            repeat_penalty=settings.repeat_penalty,
        )
    except ValueError as exc:  # e.g. "Requested tokens (...) exceed context window of ..."
        return GeneratedAnswer("", None, 0, 0, time.perf_counter() - started, error=str(exc).splitlines()[0])
    seconds = time.perf_counter() - started
    choice = response["choices"][0]
    usage = response.get("usage") or {}
    return GeneratedAnswer(
        text=str(choice["message"].get("content") or ""),
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        seconds=seconds,
    )


def generate_answers(
    gguf: Path,
    prompts: Sequence[Sequence[Message]],
    settings: GenerationSettings,
    label: str = "answers",
    threads: LlamaThreads | None = None,
) -> GenerationRun:
    """Greedy answers of the GGUF model to each prompt (a list of system/user messages); ``threads``
    chooses the threads before each answer (default: ``settings.n_threads`` minus busy cores)."""
    started = time.perf_counter()
    threads = threads or LlamaThreads(settings.n_threads)
    llm = load_gguf(gguf, settings, threads.choose())
    run = GenerationRun(gguf=Path(gguf), load_seconds=time.perf_counter() - started)
    try:
        for messages in tqdm(prompts, desc=label, unit="answer"):
            used = threads.adjust(llm)
            answer = replace(answer_one(llm, messages, settings), threads=used)
            if answer.error is not None:
                logger.warning("%s: example %d not answered: %s", label, len(run.answers), answer.error)
            run.answers.append(answer)
    finally:
        llm.close()
    logger.info(
        "%s: %d answers from %s, %d tokens in %.1f s (%.1f tok/s), %d cut at %d tokens; threads: %s",
        label, len(run.answers), gguf, run.completion_tokens, run.seconds, run.tokens_per_s,
        sum(1 for a in run.answers if a.finish_reason == "length"), settings.max_new_tokens,
        ", ".join(f"{k} for {v} answer(s)" for k, v in run.threads_used.items()),
    )
    return run
