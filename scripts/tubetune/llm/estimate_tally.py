"""The counters of the cost estimate (:mod:`tubetune.llm.estimate`): the requests of one pass, cache hits,
misses and projected misses, and the tokens the misses would send and receive.

A request's expected output is ``units`` (questions asked, pairs rated, paraphrases asked, one judge
verdict: see ``OUTPUT_UNITS`` in :mod:`tubetune.llm.estimate`) times the pass's output tokens per unit,
capped at the request's ``max_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tubetune.llm.client import Resolution
from tubetune.llm.cost import request_tokens
from tubetune.llm.request import LLMRequest


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
    units_in_misses: int = 0
    counted_output_tokens: float = 0.0
    system_tokens: int = 0
    prompt_cache: bool = False


def tally_request(tally: PassTally, resolution: Resolution, units: int, per_unit: float, cap: int) -> None:
    """Count one request of a pass: a hit (valid or exhausted in the cache) or the miss it would send."""
    if resolution.missing is None:
        tally.requests += 1
        tally.hits += 1
        if resolution.error is not None:
            tally.quarantined_in_cache += 1
        return
    if len(resolution.missing.messages) > 1:
        tally.reask_misses += 1
    count_miss(tally, resolution.missing, units, per_unit, cap)


def project_request(tally: PassTally, request: LLMRequest, units: int, per_unit: float, cap: int) -> None:
    """Count a projected miss: a request whose content depends on a reply not cached yet."""
    tally.projected += 1
    count_miss(tally, request, units, per_unit, cap)


def count_miss(tally: PassTally, request: LLMRequest, units: int, per_unit: float, cap: int) -> None:
    """Count a miss: its input tokens and the output tokens expected for ``units`` (at most ``cap``)."""
    tally.requests += 1
    tally.misses += 1
    tally.counted_input_tokens += request_tokens(request)
    tally.units_in_misses += units
    tally.counted_output_tokens += min(per_unit * units, cap)


def project_share(
    tally: PassTally, items: Sequence[tuple[LLMRequest, int]], count: int, per_unit: float, cap: int
) -> None:
    """Count ``count`` projected misses, each the mean of ``items`` (request, units): for a pass whose
    requests are a share of the rendered ones that is not known yet (the train chunks, the test questions)."""
    if not items or count <= 0:
        return
    n = len(items)
    tally.requests += count
    tally.misses += count
    tally.projected += count
    tally.counted_input_tokens += round(sum(request_tokens(r) for r, _ in items) * count / n)
    tally.units_in_misses += round(sum(units for _, units in items) * count / n)
    tally.counted_output_tokens += sum(min(per_unit * units, cap) for _, units in items) * count / n
