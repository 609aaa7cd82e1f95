"""What the next run's LLM passes would cost, before it runs: no API key, no network.

:func:`estimate` renders every request the next run would send and looks each one up in the
response cache, walking its re-ask chain (:meth:`LLMClient.resolve`):

- pass ``questions``: one extraction request per chunk;
- pass ``answers``: for a chunk whose extraction reply is cached and valid, the questions that pass
  the question validation checks go into the real answer request; for a chunk whose extraction is a
  miss, an answer request with the requested number of placeholder questions of typical length
  stands in for it (a *projected* miss);
- the enabled passes after them, ``quality`` and ``augment`` (build_dataset) and ``judge`` (the
  evaluation), from each chunk's Q&A pairs: see :mod:`tubetune.llm.estimate_downstream`.

A miss costs its input tokens (counted offline, see :mod:`tubetune.llm.cost`) plus the expected
output tokens (tokens per unit, e.g. per question asked, from real replies in the cache, else
defaults measured on the sample), at the online price and at the Message Batches price, with prompt
caching where the backend would send the system prompt with ``cache_control``. The offline counts
are corrected by the ratio real / counted over cache entries that a real API call wrote for the same
model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tubetune.generate.answers import PLACEHOLDERS as ANSWER_PLACEHOLDERS
from tubetune.generate.answers import answer_request, check_answers, qa_pair
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
from tubetune.llm.estimate_downstream import (
    PLACEHOLDER_ANSWER_CHARS,
    ChunkPairs,
    DownstreamConfig,
    PassEstimate,
    downstream_passes,
    filler,
)
from tubetune.llm.estimate_tally import PassTally, project_request, tally_request
from tubetune.llm.request import LLMRequest
from tubetune.llm.settings import LLMSettings
from tubetune.settings import settings_from

logger = logging.getLogger(__name__)

PASSES = ("questions", "answers")
# Every pass the estimate covers, in run order; quality, augment and judge while they are enabled.
ALL_PASSES = (*PASSES, "quality", "augment", "judge")
# A pass's requests by the first property of their output schema, and the items of its reply.
SCHEMA_PASSES = {
    "questions": "questions",
    "answers": "answers",
    "ratings": "quality",
    "paraphrases": "augment",
    "answer_a": "judge",
}
# What a pass's expected output is proportional to.
OUTPUT_UNITS = {
    "questions": "question",
    "answers": "question",
    "quality": "pair",
    "augment": "paraphrase",
    "judge": "request",
}
# Cache entries whose usage the API reported (an online call, or a Message Batches result).
REAL_ORIGINS = frozenset({"backend", "batch"})
# Output tokens per unit, measured on the reference replies in data/sample/llm_cache (written by hand
# for the sample, no API usage): reply characters / 4, summed per pass, divided by the units asked.
# questions: 12,271 characters for 144 questions asked; answers: 65,384 characters for 140;
# augment: 26,322 characters for 285 paraphrases (95 train questions x 3); judge: 54,440 characters
# for 156 replies. The seed cache has no quality ratings: a rating is the schema's JSON item (75
# characters with an empty reason), a one-sentence reason of 230 characters (the mean reason of the
# 156 judge replies) and a 2-character separator, 307 characters per pair.
DEFAULT_OUTPUT_TOKENS_PER_UNIT = {
    "questions": 21.3,
    "answers": 116.8,
    "quality": 76.8,
    "augment": 23.1,
    "judge": 87.2,
}
DEFAULT_OUTPUT_TOKENS_PER_QUESTION = {name: DEFAULT_OUTPUT_TOKENS_PER_UNIT[name] for name in PASSES}
# A projected answer request lists questions of typical length: the sample's extracted questions
# average 77 characters (144 questions in data/sample/llm_cache); this one has 76.
PLACEHOLDER_QUESTION = "Why does this step matter, and how can you tell when it has gone far enough?"


@dataclass(frozen=True)
class CacheFacts:
    """What the cache's real API replies tell: token count calibration and output tokens per unit."""

    entries: int
    real_tokens: int
    counted_tokens: int
    output_tokens: Mapping[str, int]
    output_units: Mapping[str, int]

    @property
    def ratio(self) -> float | None:
        return self.real_tokens / self.counted_tokens if self.entries and self.counted_tokens else None

    def per_unit(self, pass_name: str) -> tuple[float, str]:
        """Expected output tokens per unit of ``pass_name``, and where the figure comes from."""
        units = self.output_units.get(pass_name, 0)
        if units:
            value = self.output_tokens[pass_name] / units
            return value, f"mean of real replies in the cache ({units} {OUTPUT_UNITS[pass_name]}s)"
        return DEFAULT_OUTPUT_TOKENS_PER_UNIT[pass_name], "default measured on data/sample/llm_cache"


def _pass_of(request: LLMRequest) -> str | None:
    properties = request.output_schema.get("properties") or {}
    return next((SCHEMA_PASSES[key] for key in properties if key in SCHEMA_PASSES), None)


def _reply_units(pass_name: str, data: Any) -> int:
    """The units in a reply of ``pass_name``: its items, the paraphrases written, or 1 (a verdict)."""
    if pass_name == "judge":
        return 1 if isinstance(data, dict) and "better" in data else 0
    key = next(key for key, name in SCHEMA_PASSES.items() if name == pass_name)
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        return 0
    if pass_name == "augment":
        return sum(len(i.get("questions") or []) for i in items if isinstance(i, dict))
    return len(items)


def cache_facts(llm: LLMSettings) -> CacheFacts:
    """Calibration and output lengths from the cache entries that real API calls wrote for this model."""
    entries = real = counted = 0
    output_tokens = dict.fromkeys(ALL_PASSES, 0)
    output_units = dict.fromkeys(ALL_PASSES, 0)
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
            units = _reply_units(pass_name, parse_json(str(response.get("text", ""))))
        except ValueError:
            continue
        if units:
            output_tokens[pass_name] += usage["output_tokens"]
            output_units[pass_name] += units
    return CacheFacts(entries, real, counted, output_tokens, output_units)


def _placeholder_questions(chunk: Chunk, n_questions: int, prompt_hash: str) -> list[Question]:
    return [
        Question.of_chunk(chunk, number, PLACEHOLDER_QUESTION, prompt_hash) for number in range(n_questions)
    ]


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
    downstream: DownstreamConfig | None = None,
    llm_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The estimate of the questions and answers passes over ``chunks`` and, with ``downstream``, of
    the enabled passes after them (the content of estimate.json). ``llm_config``: the llm section the
    judge's settings are made from."""
    facts_by_model = {(llm.backend, llm.request_model): cache_facts(llm)}

    def facts_for(settings: LLMSettings) -> CacheFacts:
        key = (settings.backend, settings.request_model)
        if key not in facts_by_model:
            facts_by_model[key] = cache_facts(settings)
        return facts_by_model[key]

    facts = facts_for(llm)
    tallies, pairs = _tally_passes(chunks, questions_prompt, answers_prompt, llm, settings, facts)
    estimates = {
        "questions": PassEstimate(tallies["questions"], questions_prompt, llm),
        "answers": PassEstimate(tallies["answers"], answers_prompt, llm),
    }
    if downstream is not None:
        estimates |= downstream_passes(
            pairs, downstream, llm, llm_config or {}, lambda name, s: facts_for(s).per_unit(name)[0]
        )
    table = price_table(llm.prices)
    passes = {
        name: _pass_summary(
            name, item, facts_for(item.llm), price_for(table, item.llm.backend, item.llm.request_model)
        )
        for name, item in estimates.items()
    }
    price = price_for(table, llm.backend, llm.request_model)
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
) -> tuple[dict[str, PassTally], list[ChunkPairs]]:
    """Every request of both passes resolved through the cache: the real answer request of a chunk whose
    questions are cached, a projected one for a chunk whose extraction is a miss; and each chunk's
    Q&A rows for the passes after them."""
    client = LLMClient(llm)
    per_unit = {name: facts.per_unit(name)[0] for name in PASSES}
    tallies = {name: PassTally() for name in PASSES}
    pairs: list[ChunkPairs] = []
    cap = llm.max_tokens
    plan = extraction_plan(chunks, questions_prompt, settings, llm)
    for chunk, n_questions, request in tqdm(plan, desc="estimate", unit="chunk", disable=len(plan) < 50):
        extraction = client.resolve(request)
        tally_request(tallies["questions"], extraction, n_questions, per_unit["questions"], cap)
        if extraction.missing is not None:
            placeholders = _placeholder_questions(chunk, n_questions, questions_prompt.hash)
            projected = answer_request(chunk, placeholders, answers_prompt, llm)
            project_request(tallies["answers"], projected, n_questions, per_unit["answers"], cap)
            pairs.append(_chunk_pairs(chunk, placeholders, None, answers_prompt.hash))
            continue
        if extraction.result is None:
            pairs.append(ChunkPairs(chunk, [], exact=True))
            continue  # every reply invalid: the chunk is quarantined, no answer request
        record = {
            "chunk_id": chunk.chunk_id,
            "video_id": chunk.video_id,
            "status": "ok",
            "prompt_hash": questions_prompt.hash,
            "questions": extraction.result.data["questions"],
        }
        kept, _ = check_record(record, chunk, settings)
        if not kept:
            pairs.append(ChunkPairs(chunk, [], exact=True))
            continue
        answers = client.resolve(answer_request(chunk, kept, answers_prompt, llm), check_answers(len(kept)))
        tally_request(tallies["answers"], answers, len(kept), per_unit["answers"], cap)
        pairs.append(_chunk_pairs(chunk, kept, answers, answers_prompt.hash))
    return tallies, pairs


def _chunk_pairs(
    chunk: Chunk, questions: Sequence[Question], answers: Resolution | None, prompt_hash: str
) -> ChunkPairs:
    """The chunk's Q&A rows as rule answers writes them: from the cached answer reply, none when
    every reply was invalid, else ``questions`` with placeholder answers (not exact)."""
    if answers is None or answers.missing is not None:
        answer = filler(PLACEHOLDER_ANSWER_CHARS)
        return ChunkPairs(chunk, [qa_pair(q, answer, prompt_hash) for q in questions], exact=False)
    if answers.result is None:
        return ChunkPairs(chunk, [], exact=True)
    items = sorted(answers.result.data["answers"], key=lambda a: a["index"])
    rows = [qa_pair(questions[i["index"] - 1], i["answer"], prompt_hash) for i in items if i["answerable"]]
    return ChunkPairs(chunk, rows, exact=True)


def _pass_summary(name: str, item: PassEstimate, facts: CacheFacts, price: Price | None) -> dict[str, Any]:
    """Pass ``name`` in estimate.json: requests, hits and misses, calibrated tokens and dollars."""
    tally, prompt, llm = item.tally, item.prompt, item.llm
    ratio = facts.ratio or 1.0
    per_unit, source = facts.per_unit(name)
    probe = LLMRequest(llm.backend, llm.request_model, prompt.system, (), {}, llm.max_tokens)
    tally.prompt_cache = llm.backend == "anthropic" and uses_prompt_cache(probe, llm)
    tally.system_tokens = round(count_tokens(prompt.system) * ratio)
    input_tokens = round(tally.counted_input_tokens * ratio)
    output_tokens = round(tally.counted_output_tokens)
    caching, online, batch = _pass_dollars(tally, input_tokens, output_tokens, price)
    return {
        "model": llm.request_model,
        "requests": tally.requests,
        "hits": tally.hits,
        "misses": tally.misses,
        "projected": tally.projected,
        "reask_misses": tally.reask_misses,
        "quarantined_in_cache": tally.quarantined_in_cache,
        "input_tokens": input_tokens,
        "counted_input_tokens": tally.counted_input_tokens,
        "output_unit": OUTPUT_UNITS[name],
        "units_in_misses": tally.units_in_misses,
        "expected_output_tokens": output_tokens,
        "output_tokens_per_unit": round(per_unit, 1),
        "output_tokens_source": source,
        "assumption": item.note,
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
        "Output tokens are expected, not counted: tokens per unit (question asked, pair rated, "
        "paraphrase asked, judge verdict) times the units of each miss (capped at the pass's max_tokens).",
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
    lines += [data["assumption"] for data in result["passes"].values() if data["assumption"]]
    for name, data in result["passes"].items():
        lines.append(f"{name}: {data['prompt_caching_note']}.")
    unpriced = sorted(
        {p["model"] for p in result["passes"].values() if p["misses"] and p["dollars_online"] is None}
    )
    if unpriced:
        lines.append(f"No price for {', '.join(unpriced)} in llm.prices: dollars are unknown.")
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
        f"Next run: {totals['misses']:,} of {totals['requests']:,} requests are cache misses "
        f"({totals['projected']:,} of them projected), "
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
    downstream: DownstreamConfig | None = None,
) -> dict[str, Any]:
    """Rule ``estimate``: the next run's LLM cost from the chunk files into ``estimate_json`` and
    ``estimate_md``; ``downstream``: the passes after the answers (quality, augment, judge)."""
    result = estimate_passes(
        load_chunks(*chunk_paths),
        load_prompt(questions_prompt, QUESTION_PLACEHOLDERS),
        load_prompt(answers_prompt, ANSWER_PLACEHOLDERS),
        settings_from(LLMSettings, llm_config, "llm"),
        settings_from(QuestionSettings, question_config, "questions"),
        downstream,
        llm_config,
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
