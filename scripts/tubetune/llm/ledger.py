"""The LLM ledger: what the run's LLM jobs did and cost, per pass and mode, from their usage records.

Every LLM job (one per-shard rule run, or one batch pass) writes one usage record (a JSON
object). :func:`llm_ledger` sums them per (pass, mode) into ``ledger.json`` and a readable
``ledger.md``. Dollars come from ``llm.prices``: a batch-mode record is billed at the model's
``batch_discount``, local (llama_cpp) records cost nothing, and a model with no price makes the
dollars of its row, and of the total, unknown (null).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tubetune.errors import InputFileError
from tubetune.jsonio import atomic_write_text, json_lines, read_json, write_json
from tubetune.llm.cost import dollars, money, price_for, price_table

logger = logging.getLogger(__name__)

COUNTERS = ("requests", "cache_hits", "calls", "reasks", "valid", "invalid", "batches")
TOKENS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
TOTAL_KEYS = ("requests", "cache_hits", "calls", *TOKENS, "dollars")


class UsageRecord(BaseModel):
    """What one LLM job did; fields a later writer adds are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    pass_: str = Field(alias="pass")  # "pass" is a Python keyword
    mode: str = "online"
    backend: str
    model: str
    job: str = ""
    requests: int = 0
    cache_hits: int = 0
    calls: int = 0
    reasks: int = 0
    valid: int = 0
    invalid: int = 0
    batches: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    wall_s: float = 0.0

    @classmethod
    def parse(cls, data: Any, where: str) -> UsageRecord:
        """A record from its JSON object; InputFileError naming ``where`` and the bad field."""
        if not isinstance(data, dict):
            raise InputFileError(f"{where}: a usage record must be a JSON object")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"])
            raise InputFileError(f"{where}: usage record field '{field}': {error['msg']}") from None

    @property
    def tokens(self) -> int:
        return sum(int(getattr(self, name)) for name in TOKENS)


def read_records(paths: Iterable[str | Path]) -> list[UsageRecord]:
    """Usage records from files holding one JSON object, or JSON Lines with one record a line."""
    records: list[UsageRecord] = []
    for path in paths:
        text = _read_text(path)
        if not text.strip():
            continue
        try:
            records.append(UsageRecord.parse(json.loads(text), str(path)))
            continue
        except json.JSONDecodeError:
            pass
        for number, data in json_lines(text.splitlines(), str(path)):
            records.append(UsageRecord.parse(data, f"{path}:{number}"))
    return records


def _read_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: cannot read usage record ({exc})") from exc


def _empty_row(pass_name: str, mode: str) -> dict[str, Any]:
    row: dict[str, Any] = {"pass": pass_name, "mode": mode, "jobs": 0}
    row.update(dict.fromkeys((*COUNTERS, *TOKENS), 0))
    row.update(dollars=0.0, wall_s=0.0, models=[])
    return row


def _add(row: dict[str, Any], record: UsageRecord, cost: float | None) -> None:
    row["jobs"] += 1
    for name in (*COUNTERS, *TOKENS):
        row[name] += int(getattr(record, name))
    row["wall_s"] = round(row["wall_s"] + record.wall_s, 3)
    row["dollars"] = None if cost is None or row["dollars"] is None else row["dollars"] + cost
    label = f"{record.backend}/{record.model}"
    if label not in row["models"]:
        row["models"].append(label)


def build_ledger(
    records: Sequence[UsageRecord], prices: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The ledger of ``records`` priced by ``prices`` (``llm.prices``): one row per (pass, mode) in
    order of appearance, and a total row."""
    table = price_table(prices)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    total = _empty_row("total", "")
    unpriced: list[str] = []
    for record in records:
        price = price_for(table, record.backend, record.model)
        cost: float | None
        if price is not None:
            cost = dollars(
                record.input_tokens,
                record.output_tokens,
                record.cache_read_input_tokens,
                record.cache_creation_input_tokens,
                price=price,
                batch=record.mode == "batch",
            )
        elif record.tokens == 0:
            cost = 0.0  # nothing was billed
        else:
            cost = None
            if record.model not in unpriced:
                unpriced.append(record.model)
        key = (record.pass_, record.mode)
        if key not in rows:
            rows[key] = _empty_row(*key)
        _add(rows[key], record, cost)
        _add(total, record, cost)
    for row in (*rows.values(), total):
        if row["dollars"] is not None:
            row["dollars"] = round(row["dollars"], 6)
    return {
        "rows": list(rows.values()),
        "total": total,
        "unpriced_models": unpriced,
        "note": "wall_s sums the jobs' wall times; jobs that ran at the same time overlap",
    }


def render_ledger(ledger: Mapping[str, Any]) -> str:
    """ledger.md: a table per (pass, mode) and one line naming the total dollars."""
    header = (
        "| pass | mode | jobs | requests | cache hits | calls | re-asks | batches | tokens in | tokens out "
        "| cache read | cache write | dollars | wall s |"
    )
    lines = ["# LLM ledger", "", header, "|" + " --- |" * 14]
    for row in (*ledger["rows"], ledger["total"]):
        name = "**total**" if row is ledger["total"] else row["pass"]
        lines.append(
            f"| {name} | {row['mode']} | {row['jobs']} | {row['requests']:,} | {row['cache_hits']:,} "
            f"| {row['calls']:,} | {row['reasks']:,} | {row['batches']:,} | {row['input_tokens']:,} "
            f"| {row['output_tokens']:,} | {row['cache_read_input_tokens']:,} "
            f"| {row['cache_creation_input_tokens']:,} | {money(row['dollars'])} | {row['wall_s']:,.1f} |"
        )
    lines += ["", total_line(ledger), "", f"Note: {ledger['note']}."]
    return "\n".join(lines) + "\n"


def total_line(ledger: Mapping[str, Any]) -> str:
    """One sentence with the total dollars (or why they are unknown) and the calls behind them."""
    total = ledger["total"]
    tokens = f"{total['input_tokens']:,} tokens in, {total['output_tokens']:,} out"
    if total["dollars"] is None:
        models = ", ".join(ledger["unpriced_models"])
        return (
            f"Total dollars unknown: no price for {models} (add it to llm.prices); "
            f"{total['calls']:,} calls, {tokens}."
        )
    return f"Total: {money(total['dollars'])} for {total['calls']:,} LLM calls ({tokens})."


def llm_ledger(
    record_paths: Iterable[str | Path],
    prices: Mapping[str, Mapping[str, Any]],
    ledger_json: str | Path,
    ledger_md: str | Path,
) -> dict[str, Any]:
    """Rule ``llm_ledger``: the usage records summed and priced by ``prices`` (``llm.prices``) into
    ``ledger_json`` and ``ledger_md``."""
    records = read_records(record_paths)
    ledger = build_ledger(records, prices)
    write_json(ledger_json, ledger)
    atomic_write_text(ledger_md, render_ledger(ledger))
    logger.info("%d usage records. %s", len(records), total_line(ledger))
    return ledger


def ledger_total(path: str | Path) -> dict[str, Any]:
    """The total of a ledger.json: requests, cache_hits, calls, the four token counts and dollars."""
    ledger = read_json(path)
    try:
        total = ledger["total"]
        return {key: total[key] for key in TOTAL_KEYS}
    except (KeyError, TypeError) as exc:
        raise InputFileError(f"{path}: not a ledger.json (no total {exc})") from None
