"""What the next run's LLM passes would cost, before it runs: no API key, no network.

:func:`estimate` renders every request the next run would send and looks each one up in the
response cache, walking its re-ask chain (:meth:`LLMClient.resolve`):

- pass ``questions``: one extraction request per chunk;
- pass ``answers``: for a chunk whose extraction reply is cached and valid, the questions that pass
  the validate_questions checks go into the real answer request; for a chunk whose extraction is a
  miss, an answer request with the requested number of placeholder questions of typical length
  stands in for it (a *projected* miss).

A miss costs its input tokens (counted offline, see :mod:`tubetune.llm.cost`) plus the expected
output tokens (tokens per question from real replies in the cache, else defaults measured on the
sample), at the online price and at the Message Batches price, with prompt caching where the
backend would send the system prompt with ``cache_control``. The offline counts are corrected by
the ratio real / counted over cache entries that a real API call wrote for the same model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tubetune.generate.answers import PLACEHOLDERS as ANSWER_PLACEHOLDERS
from tubetune.generate.answers import answer_request, check_answers
from tubetune.generate.chunk import Chunk
from tubetune.generate.prompts import PromptTemplate, load_prompt
from tubetune.generate.questions import PLACEHOLDERS as QUESTION_PLACEHOLDERS
from tubetune.generate.questions import Question, QuestionSettings, check_record, extraction_plan, load_chunks
from tubetune.jsonio import atomic_write_text, write_json
from tubetune.llm.backends import uses_prompt_cache
from tubetune.llm.cache import iter_entries
from tubetune.llm.client import LLMClient, Resolution, parse_json
from tubetune.llm.cost import (
    TOKEN_COUNTER,
    Price,
    count_tokens,
    dollars,
    money,
    price_for,
    price_table,
    request_tokens,
)
from tubetune.llm.request import LLMRequest
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

logger = logging.getLogger(__name__)

PASSES = ("questions", "answers")
# Cache entries whose usage the API reported (an online call, or a Message Batches result).
REAL_ORIGINS = frozenset({"backend", "batch"})
# Output tokens per question asked, measured on the 80 reference replies in data/sample/llm_cache
# (written by hand, no API usage): reply characters / 4, summed per pass, divided by the questions
# asked. questions: 12,271 characters for 144 questions asked; answers: 65,384 characters for 140.
DEFAULT_OUTPUT_TOKENS_PER_QUESTION = {"questions": 21.3, "answers": 116.8}
# A projected answer request lists questions of typical length: the sample's extracted questions
# average 77 characters (144 questions in data/sample/llm_cache); this one has 76.
PLACEHOLDER_QUESTION = "Why does this step matter, and how can you tell when it has gone far enough?"


@dataclass
class PassTally:
    """Requests of one pass and what their misses would send."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    projected: int = 0
    reask_misses: int = 0
    quarantined_in_cache: int = 0
    counted_input_tokens: int = 0
    questions_in_misses: int = 0
    counted_output_tokens: float = 0.0
    system_tokens: int = 0
    prompt_cache: bool = False


@dataclass(frozen=True)
class CacheFacts:
    """What the cache's real API replies tell: token count calibration and output tokens per question."""

    entries: int
    real_tokens: int
    counted_tokens: int
    output_tokens: Mapping[str, int]
    output_questions: Mapping[str, int]

    @property
    def ratio(self) -> float | None:
        return self.real_tokens / self.counted_tokens if self.entries and self.counted_tokens else None

    def per_question(self, pass_name: str) -> tuple[float, str]:
        """Expected output tokens per question of ``pass_name``, and where the figure comes from."""
        questions = self.output_questions.get(pass_name, 0)
        if questions:
            value = self.output_tokens[pass_name] / questions
            return value, f"mean of real replies in the cache ({questions} questions)"
        return DEFAULT_OUTPUT_TOKENS_PER_QUESTION[pass_name], "default measured on data/sample/llm_cache"


def _pass_of(request: LLMRequest) -> str | None:
    properties = request.output_schema.get("properties") or {}
    return next((name for name in PASSES if name in properties), None)


def cache_facts(llm: LLMSettings) -> CacheFacts:
    """Calibration and output lengths from the cache entries that real API calls wrote for this model."""
    entries = real = counted = 0
    output_tokens = dict.fromkeys(PASSES, 0)
    output_questions = dict.fromkeys(PASSES, 0)
    seen: set[str] = set()
    for entry in (e for directory in llm.cache_dirs() for e in iter_entries(directory)):
        if entry.get("origin", "backend") not in REAL_ORIGINS or entry.get("key") in seen:
            continue
        seen.add(str(entry.get("key")))
        try:
            request = LLMRequest.from_dict(entry["request"])
            response = entry["response"]
            usage = {str(k): int(v) for k, v in (response.get("usage") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        if request.backend != llm.backend or request.model != llm.request_model:
            continue
        sent = sum(
            usage.get(k, 0)
            for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        )
        if sent > 0:
            entries += 1
            real += sent
            counted += request_tokens(request)
        pass_name = _pass_of(request)
        if pass_name is None or usage.get("output_tokens", 0) <= 0:
            continue
        try:
            items = parse_json(str(response.get("text", "")))[pass_name]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(items, list) and items:
            output_tokens[pass_name] += usage["output_tokens"]
            output_questions[pass_name] += len(items)
    return CacheFacts(entries, real, counted, output_tokens, output_questions)


def _placeholder_questions(chunk: Chunk, n_questions: int, prompt_hash: str) -> list[Question]:
    return [
        Question.of_chunk(chunk, number, PLACEHOLDER_QUESTION, prompt_hash) for number in range(n_questions)
    ]


def _tally(tally: PassTally, resolution: Resolution, n_questions: int, per_question: float, cap: int) -> None:
    """Count one request of a pass: a hit (valid or exhausted in the cache) or the miss it would send."""
    if resolution.missing is None:
        tally.requests += 1
        tally.hits += 1
        if resolution.error is not None:
            tally.quarantined_in_cache += 1
        return
    if len(resolution.missing.messages) > 1:
        tally.reask_misses += 1
    _count_miss(tally, resolution.missing, n_questions, per_question, cap)


def _project(tally: PassTally, request: LLMRequest, n_questions: int, per_question: float, cap: int) -> None:
    """Count a projected miss: a request whose content depends on a reply not cached yet."""
    tally.projected += 1
    _count_miss(tally, request, n_questions, per_question, cap)


def _count_miss(
    tally: PassTally, request: LLMRequest, n_questions: int, per_question: float, cap: int
) -> None:
    """Count a miss: its input tokens and the output tokens expected for ``n_questions`` (at most ``cap``)."""
    tally.requests += 1
    tally.misses += 1
    tally.counted_input_tokens += request_tokens(request)
    tally.questions_in_misses += n_questions
    tally.counted_output_tokens += min(per_question * n_questions, cap)


def _note_cache(tally: PassTally, system: str, llm: LLMSettings) -> str:
    tokens = count_tokens(system)
    model = llm.request_model
    if llm.backend != "anthropic":
        return f"{llm.backend} runs locally: no prompt caching, no cost"
    minimum = llm.cache_min_tokens.get(model)
    if not minimum:
        return f"no llm.cache_min_tokens entry for {model}: no prompt caching"
    if tally.prompt_cache:
        return (
            f"system prompt ~{tokens:,} tokens >= {minimum:,} minimum for {model}: prompt caching "
            "(the first miss writes it, later misses read it)"
        )
    return f"system prompt ~{tokens:,} tokens < {minimum:,} minimum for {model}: no prompt caching"


def _pass_dollars(
    tally: PassTally, input_tokens: int, output_tokens: int, price: Price | None
) -> tuple[dict[str, int], float | None, float | None]:
    """Cache write/read tokens of the misses, and their dollars online and in Message Batches."""
    write = read = 0
    plain = input_tokens
    if tally.prompt_cache and tally.misses:
        write = tally.system_tokens
        read = tally.system_tokens * (tally.misses - 1)
        plain = max(0, input_tokens - write - read)
    caching = {"cache_write_tokens": write, "cache_read_tokens": read}
    if price is None:
        return caching, None, None
    online = dollars(plain, output_tokens, read, write, price=price, batch=False)
    batch = dollars(plain, output_tokens, read, write, price=price, batch=True)
    return caching, round(online, 6), round(batch, 6)


def _sum_dollars(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else round(sum(v for v in values if v is not None), 6)


def estimate_passes(
    chunks: Sequence[Chunk],
    questions_prompt: PromptTemplate,
    answers_prompt: PromptTemplate,
    llm: LLMSettings,
    settings: QuestionSettings,
) -> dict[str, Any]:
    """The estimate of the questions and answers passes over ``chunks`` (the content of estimate.json)."""
    facts = cache_facts(llm)
    tallies = _tally_passes(chunks, questions_prompt, answers_prompt, llm, settings, facts)
    price = price_for(price_table(llm.prices), llm.backend, llm.request_model)
    passes = {
        name: _pass_summary(name, tallies[name], prompt, llm, facts, price)
        for name, prompt in (("questions", questions_prompt), ("answers", answers_prompt))
    }
    result: dict[str, Any] = {
        "backend": llm.backend,
        "model": llm.request_model,
        "mode": "batch" if llm.batch else "online",
        "chunks": len(chunks),
        "price": None if price is None else vars(price),
        "token_counter": TOKEN_COUNTER,
        "calibration": _calibration(facts, llm),
        "passes": passes,
        "totals": _totals(passes, llm),
    }
    result["caveats"] = caveats(result)
    return result


def _tally_passes(
    chunks: Sequence[Chunk],
    questions_prompt: PromptTemplate,
    answers_prompt: PromptTemplate,
    llm: LLMSettings,
    settings: QuestionSettings,
    facts: CacheFacts,
) -> dict[str, PassTally]:
    """Every request of both passes resolved through the cache: the real answer request of a chunk whose
    questions are cached, a projected one for a chunk whose extraction is a miss."""
    client = LLMClient(llm)
    per_question = {name: facts.per_question(name)[0] for name in PASSES}
    tallies = {name: PassTally() for name in PASSES}
    cap = llm.max_tokens
    plan = extraction_plan(chunks, questions_prompt, settings, llm)
    for chunk, n_questions, request in tqdm(plan, desc="estimate", unit="chunk", disable=len(plan) < 50):
        extraction = client.resolve(request)
        _tally(tallies["questions"], extraction, n_questions, per_question["questions"], cap)
        if extraction.missing is not None:
            placeholders = _placeholder_questions(chunk, n_questions, questions_prompt.hash)
            projected = answer_request(chunk, placeholders, answers_prompt, llm)
            _project(tallies["answers"], projected, n_questions, per_question["answers"], cap)
            continue
        if extraction.result is None:
            continue  # every reply invalid: the chunk is quarantined, no answer request
        record = {
            "chunk_id": chunk.chunk_id,
            "video_id": chunk.video_id,
            "status": "ok",
            "prompt_hash": questions_prompt.hash,
            "questions": extraction.result.data["questions"],
        }
        kept, _ = check_record(record, chunk, settings)
        if kept:
            answers = client.resolve(
                answer_request(chunk, kept, answers_prompt, llm), check_answers(len(kept))
            )
            _tally(tallies["answers"], answers, len(kept), per_question["answers"], cap)
    return tallies


def _pass_summary(
    name: str,
    tally: PassTally,
    prompt: PromptTemplate,
    llm: LLMSettings,
    facts: CacheFacts,
    price: Price | None,
) -> dict[str, Any]:
    """Pass ``name`` in estimate.json: requests, hits and misses, calibrated tokens and dollars."""
    ratio = facts.ratio or 1.0
    per_question, source = facts.per_question(name)
    probe = LLMRequest(llm.backend, llm.request_model, prompt.system, (), {}, llm.max_tokens)
    tally.prompt_cache = llm.backend == "anthropic" and uses_prompt_cache(probe, llm)
    tally.system_tokens = round(count_tokens(prompt.system) * ratio)
    input_tokens = round(tally.counted_input_tokens * ratio)
    output_tokens = round(tally.counted_output_tokens)
    caching, online, batch = _pass_dollars(tally, input_tokens, output_tokens, price)
    return {
        "requests": tally.requests,
        "hits": tally.hits,
        "misses": tally.misses,
        "projected": tally.projected,
        "reask_misses": tally.reask_misses,
        "quarantined_in_cache": tally.quarantined_in_cache,
        "input_tokens": input_tokens,
        "counted_input_tokens": tally.counted_input_tokens,
        "questions_in_misses": tally.questions_in_misses,
        "expected_output_tokens": output_tokens,
        "output_tokens_per_question": round(per_question, 1),
        "output_tokens_source": source,
        "system_prompt_tokens": tally.system_tokens,
        "prompt_caching": tally.prompt_cache,
        "prompt_caching_note": _note_cache(tally, prompt.system, llm),
        **caching,
        "dollars_online": online,
        "dollars_batch": batch,
    }


def _totals(passes: Mapping[str, Mapping[str, Any]], llm: LLMSettings) -> dict[str, Any]:
    totals: dict[str, Any] = {
        key: sum(p[key] for p in passes.values())
        for key in ("requests", "hits", "misses", "projected", "input_tokens", "expected_output_tokens")
    }
    totals["dollars_online"] = _sum_dollars([p["dollars_online"] for p in passes.values()])
    totals["dollars_batch"] = _sum_dollars([p["dollars_batch"] for p in passes.values()])
    totals["dollars"] = totals["dollars_batch"] if llm.batch else totals["dollars_online"]
    return totals


def _calibration(facts: CacheFacts, llm: LLMSettings) -> dict[str, Any]:
    return {
        "entries": facts.entries,
        "ratio": None if facts.ratio is None else round(facts.ratio, 4),
        "applied": facts.ratio is not None,
        "note": (
            f"offline counts multiplied by {facts.ratio:.3f}, the ratio real / counted input tokens "
            f"over {facts.entries} cache entries written by API calls for {llm.request_model}"
            if facts.ratio is not None
            else f"no cache entry written by an API call for {llm.request_model}: counts uncorrected"
        ),
    }


def caveats(result: Mapping[str, Any]) -> list[str]:
    """The limits of ``result`` in plain words."""
    lines = [
        f"Input tokens are counted offline with {result['token_counter']}; {result['calibration']['note']}.",
        "Output tokens are expected, not counted: tokens per question times the questions of each miss "
        "(capped at llm.max_tokens).",
        "Each miss is assumed to get a valid reply at once: re-asks after invalid replies add requests "
        "that this estimate does not include (the ledger counts them after the run).",
    ]
    answers = result["passes"]["answers"]
    if answers["projected"]:
        lines.append(
            f"{answers['projected']} answer requests are projected: their chunks' questions are not "
            f"extracted yet, so each is counted with the requested number of placeholder questions of "
            f"{len(PLACEHOLDER_QUESTION)} characters, all assumed to pass validation."
        )
    for name, data in result["passes"].items():
        lines.append(f"{name}: {data['prompt_caching_note']}.")
    if result["price"] is None and result["totals"]["misses"]:
        lines.append(f"No price for {result['model']} in llm.prices: dollars are unknown.")
    if result["backend"] == "anthropic":
        lines.append(
            "Message Batches cost batch_discount times the online price and finish within 24 hours; "
            "prompt cache hits within a batch are not guaranteed."
        )
    return lines


def render_estimate(result: Mapping[str, Any]) -> str:
    """estimate.md: a table per pass, the total and the caveats."""
    totals = result["totals"]
    lines = [
        "# LLM cost estimate",
        "",
        f"{result['backend']}/{result['model']}, mode {result['mode']}, {result['chunks']} chunks. "
        f"Next run: {totals['misses']:,} of {totals['requests']:,} requests are cache misses, "
        f"expected cost {money(totals['dollars'])} ({result['mode']}).",
        "",
        "| pass | requests | hits | misses | projected | input tokens | expected output tokens "
        "| online | batch |",
        "|" + " --- |" * 9,
    ]
    for name, data in (*result["passes"].items(), ("**total**", totals)):
        lines.append(
            f"| {name} | {data['requests']:,} | {data['hits']:,} | {data['misses']:,} "
            f"| {data['projected']:,} | {data['input_tokens']:,} | {data['expected_output_tokens']:,} "
            f"| {money(data['dollars_online'])} | {money(data['dollars_batch'])} |"
        )
    lines += ["", "## Caveats", ""]
    lines += [f"- {line}" for line in result["caveats"]]
    return "\n".join(lines) + "\n"


def estimate(
    chunk_paths: Sequence[str | Path],
    questions_prompt: str | Path,
    answers_prompt: str | Path,
    llm_config: Mapping[str, Any],
    question_config: Mapping[str, Any],
    estimate_json: str | Path,
    estimate_md: str | Path,
) -> dict[str, Any]:
    """Rule ``estimate``: the next run's LLM cost from the chunk files into ``estimate_json`` and
    ``estimate_md``."""
    result = estimate_passes(
        load_chunks(*chunk_paths),
        load_prompt(questions_prompt, QUESTION_PLACEHOLDERS),
        load_prompt(answers_prompt, ANSWER_PLACEHOLDERS),
        settings_from(LLMSettings, llm_config, "llm"),
        settings_from(QuestionSettings, question_config, "questions"),
    )
    write_json(estimate_json, result)
    atomic_write_text(estimate_md, render_estimate(result))
    totals = result["totals"]
    logger.info(
        "estimate: %d requests, %d misses (%d projected), %s online, %s batch",
        totals["requests"],
        totals["misses"],
        totals["projected"],
        money(totals["dollars_online"]),
        money(totals["dollars_batch"]),
    )
    return result
