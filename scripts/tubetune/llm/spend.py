"""What the LLM calls behind the dataset cost, as the dataset statistics and the evaluation report show it.

The figures are the total row of the LLM ledger (``results/llm/ledger.json``, written by
:func:`tubetune.llm.ledger.llm_ledger`); the ledger's ``ledger.md`` has them per pass and mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tubetune.errors import InputFileError
from tubetune.jsonio import read_json
from tubetune.llm.ledger import ledger_total

LEDGER_MD = "results/llm/ledger.md"


def ledger_cost(path: str | Path) -> dict[str, Any]:
    """The ledger's total (:func:`ledger_total`) and ``unpriced_models``: the models with no price in
    ``llm.prices``, which leave the total dollars unknown (None)."""
    total = ledger_total(path)
    unpriced = read_json(path).get("unpriced_models") or []
    if not isinstance(unpriced, list):
        raise InputFileError(f"{path}: unpriced_models must be a list of model names")
    return {**total, "unpriced_models": [str(model) for model in unpriced]}


def format_dollars(value: float | None) -> str:
    """"$0", "$0.0123" (4 decimals under a dollar), "$12.34", or "unknown" for None."""
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def unknown_reason(cost: Mapping[str, Any]) -> str:
    """Why the dollars of ``cost`` are unknown: the models without a price."""
    models = ", ".join(cost.get("unpriced_models") or []) or "a model"
    return f"no price for {models} in llm.prices"


def dollars_text(cost: Mapping[str, Any]) -> str:
    """The dollars of ``cost``, or "unknown (no price for <models> in llm.prices)"."""
    if cost["dollars"] is None:
        return f"unknown ({unknown_reason(cost)})"
    return format_dollars(cost["dollars"])


def cost_sentence(cost: Mapping[str, Any]) -> str:
    """One sentence: what building the dataset cost and for how many LLM calls (no ledger pointer)."""
    calls = int(cost["calls"])
    if calls == 0 and cost["dollars"] == 0:
        return "Building the dataset made no LLM call (all LLM replies came from the cache): $0"
    noun = "LLM call" if calls == 1 else "LLM calls"
    if cost["dollars"] is None:
        return f"Building the dataset cost an unknown amount for {calls:,} {noun}; {unknown_reason(cost)}"
    return f"Building the dataset cost {format_dollars(cost['dollars'])} for {calls:,} {noun}"
