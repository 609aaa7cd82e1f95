"""What the report says about the judge and the export parity check.

Reads ``results/eval/judge.json`` / ``judge.jsonl`` (rule judge) and ``results/eval/parity.json``
(rule parity) as they are: a judge or parity check that was not run (or a comparison that was
skipped) is reported with its reason, never an error. Pure functions: text and table rows for the
template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tubetune.errors import InputFileError
from tubetune.llm.spend import format_dollars

MODELS = ("base", "tuned")
FAITHFULNESS_RANK = {"yes": 2, "partly": 1, "no": 0}
N_DISAGREEMENTS = 3  # consistent wins shown each way
N_FLIPS = 2  # preferences that changed sides with the order
PARITY_LABELS = {
    "gguf_f16": "f16 GGUF in llama.cpp",
    "hf_transformers": "Hugging Face export in transformers",
}


def check_status(document: Any, where: str, allowed: Sequence[str]) -> dict[str, Any]:
    """``document`` as a dict whose ``status`` is one of ``allowed``; one line naming ``where`` if not."""
    if not isinstance(document, Mapping):
        raise InputFileError(f"{where}: expected a JSON object")
    status = document.get("status")
    if status not in allowed:
        raise InputFileError(f"{where}: status {status!r} is not one of {', '.join(allowed)}")
    return dict(document)


def _number(value: Any, digits: int = 2) -> str:
    return "n/a" if not isinstance(value, (int, float)) else f"{value:.{digits}f}"


def _interval(values: Any, digits: int = 2) -> str:
    if not isinstance(values, Sequence) or len(values) != 2 or None in values:
        return "no interval"
    return f"95% CI {_number(values[0], digits)}-{_number(values[1], digits)}"


def win_rate_conclusion(ci95: Any, n: int) -> str:
    """What the win rate's interval allows one to conclude (it excludes 0.5 or not)."""
    if not isinstance(ci95, Sequence) or len(ci95) != 2 or None in ci95:
        return "Without an interval nothing can be concluded from the win rate."
    low, high = float(ci95[0]), float(ci95[1])
    if low > 0.5:
        return ("The interval lies above 0.5: on questions like these the judge prefers the tuned model, "
                "beyond what chance over the questions explains.")
    if high < 0.5:
        return ("The interval lies below 0.5: on questions like these the judge prefers the base model, "
                "beyond what chance over the questions explains.")
    return (f"The interval includes 0.5: with {n} questions the preference may be chance; neither model is "
            "shown to be preferred.")


def faithfulness_line(faithfulness: Any) -> list[str]:
    """``base: yes 10, partly 8, no 8 (score 0.54)`` per model (score: yes 1, partly 0.5, no 0)."""
    lines = []
    for name in MODELS:
        counts = faithfulness.get(name) if isinstance(faithfulness, Mapping) else None
        if not isinstance(counts, Mapping):
            continue
        score = counts.get("score")
        share = f" (score {score:.2f})" if isinstance(score, (int, float)) else ""
        lines.append(f"{name}: yes {counts.get('yes', 0)}, partly {counts.get('partly', 0)}, "
                     f"no {counts.get('no', 0)}{share}")
    return lines


def judge_context(judge: Mapping[str, Any]) -> dict[str, Any]:
    """The report's opening: the judge's verdict and what it allows one to conclude, or why the judge
    was not run."""
    if judge.get("status") != "ok":
        reason = judge.get("reason") or "no reason given"
        return {"ran": False, "headline": f"The judge was not run: {reason}", "details": []}
    n = int(judge.get("n") or 0)
    headline = (f"Tuned preferred on {judge.get('tuned_wins', 0)} of {n} questions "
                f"(base on {judge.get('base_wins', 0)}, ties {judge.get('ties', 0)}), win rate "
                f"{_number(judge.get('tuned_win_rate'))} ({_interval(judge.get('ci95'))}).")
    details = [win_rate_conclusion(judge.get("ci95"), n)]
    faithful = faithfulness_line(judge.get("faithfulness"))
    if faithful:
        delta = judge.get("faithful_delta")
        change = (f"; tuned - base {_number(delta)} ({_interval(judge.get('faithful_delta_ci95'))})"
                  if isinstance(delta, (int, float)) else "")
        details.append("Faithful to the source chunk (score: yes 1, partly 0.5, no 0): " + "; ".join(faithful)
                       + change + ".")
    style = judge.get("style")
    if isinstance(style, Mapping):
        means = ", ".join(f"{name} {_number((style.get(name) or {}).get('mean'))}" for name in MODELS)
        details.append(f"Sounds like the channel (1-5): {means}; tuned - base {_number(style.get('delta'))} "
                       f"({_interval(style.get('delta_ci95'))}).")
    counted = [f"{judge.get('flips', 0)} of the ties are preferences that flipped with the answer order"]
    if judge.get("errors"):
        counted.append(f"{judge['errors']} questions had no valid verdict and are left out")
    details.append("; ".join(counted) + ".")
    model, backend = judge.get("model", "unknown model"), judge.get("backend", "unknown backend")
    details.append(f"Judge: {model} ({backend}), each question in both answer orders; a model wins a "
                   "question only when both orders prefer it.")
    return {"ran": True, "headline": headline, "details": details}


def judge_cost_sentence(judge: Mapping[str, Any]) -> str:
    """What the judge's LLM calls cost (judge.json's usage and dollars)."""
    if judge.get("status") != "ok":
        return "The judge made no LLM call (it was not run)."
    usage = judge.get("usage")
    calls = int(usage.get("calls", 0) or 0) if isinstance(usage, Mapping) else 0
    dollars = judge.get("dollars")
    if calls == 0:
        return "The judge made no LLM call (all its replies came from the cache): $0."
    noun = "LLM call" if calls == 1 else "LLM calls"
    amount = format_dollars(dollars) if dollars is not None else "an unknown amount (no price for its model)"
    return f"The judge cost {amount} for {calls:,} {noun} (results/eval/judge.json)."


def _telling(row: Mapping[str, Any]) -> float:
    """How far apart the judge rated the two answers: faithfulness rank and style difference."""
    faith = row.get("faithfulness") or {}
    style = row.get("style") or {}
    ranks = [FAITHFULNESS_RANK.get(str(faith.get(name)), 1) for name in MODELS]
    gap = abs(ranks[1] - ranks[0])
    try:
        return gap + abs(float(style.get("tuned", 0)) - float(style.get("base", 0)))
    except (TypeError, ValueError):
        return float(gap)


def _case(row: Mapping[str, Any], answers: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
    answer = answers.get(int(row.get("index", -1)))
    if answer is None:
        return None
    faith = row.get("faithfulness") or {}
    style = row.get("style") or {}
    return {
        "index": answer["index"],
        "question": answer["question"],
        "reference": answer["reference"],
        "outcome": row.get("outcome"),
        "sides": [
            {"name": name, "answer": answer[name]["answer"], "faithfulness": faith.get(name, "n/a"),
             "style": _number(style.get(name), 1)}
            for name in MODELS
        ],
        "orders": [
            {"order": str(o.get("order", "")).replace("_", " "), "preferred": o.get("preferred", "n/a"),
             "reason": o.get("reason", "")}
            for o in row.get("orders") or [] if isinstance(o, Mapping)
        ],
    }


def disagreements(
    judge_rows: Sequence[Mapping[str, Any]], answers: Sequence[Mapping[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """The most telling questions: those the judge decided the same way in both orders, each way
    (the largest rating gaps first), and a few preferences that flipped with the order."""
    by_index = {int(a["index"]): a for a in answers}

    def pick(rows: list[Mapping[str, Any]], n: int) -> list[dict[str, Any]]:
        ranked = sorted(rows, key=lambda r: (-_telling(r), int(r.get("index", 0))))
        cases = [_case(row, by_index) for row in ranked]
        return [case for case in cases if case is not None][:n]

    return {
        "tuned": pick([r for r in judge_rows if r.get("outcome") == "tuned"], N_DISAGREEMENTS),
        "base": pick([r for r in judge_rows if r.get("outcome") == "base"], N_DISAGREEMENTS),
        "flips": pick([r for r in judge_rows if r.get("flipped")], N_FLIPS),
    }


def parity_context(parity: Mapping[str, Any]) -> dict[str, Any]:
    """The parity section: one row per comparison, and whether any shows a drop."""
    status = parity.get("status")
    comparisons = parity.get("comparisons")
    if not isinstance(comparisons, Mapping):
        comparisons = {}
    rows = []
    for name, comparison in comparisons.items():
        if not isinstance(comparison, Mapping):
            continue
        compared = comparison.get("tokens_compared")
        rows.append({
            "label": PARITY_LABELS.get(name, name),
            "status": comparison.get("status", "n/a"),
            "tokens": (f"{comparison.get('tokens_equal')} of {compared}" if compared else "-"),
            "share": (f"{comparison['share'] * 100:.0f}%"
                      if isinstance(comparison.get("share"), (int, float)) else "-"),
            "reason": comparison.get("reason") or "",
            "prompts": [
                {"index": p.get("index", ""), "equal_prefix": p.get("equal_prefix", "?"),
                 "compared": p.get("compared", "?"), "reference_text": p.get("reference_text", ""),
                 "other_text": p.get("other_text", "")}
                for p in comparison.get("per_prompt") or [] if isinstance(p, Mapping)
            ],
        })
    drops = [row["label"] for row in rows if row["status"] == "drop"]
    if status == "not_run":
        summary = f"The parity check was not run: {parity.get('reason') or 'no reason given'}"
    elif drops:
        summary = (f"Parity drop: {', '.join(drops)} agreed with the fused MLX model on fewer than "
                   f"{_share(parity.get('min_share'))} of greedy tokens before the first divergence. "
                   "The exported model does not answer like the model that was evaluated for loss.")
    else:
        summary = ("The exports answer like the fused MLX model: every comparison run agreed on at least "
                   f"{_share(parity.get('min_share'))} of greedy tokens before the first divergence.")
    return {"status": status, "drop": bool(drops) or status == "drop", "summary": summary, "rows": rows,
            "n_prompts": parity.get("n_prompts"), "max_tokens": parity.get("max_tokens")}


def _share(value: Any) -> str:
    return f"{value * 100:.0f}%" if isinstance(value, (int, float)) else "the minimum share"


__all__ = [
    "check_status",
    "disagreements",
    "judge_context",
    "judge_cost_sentence",
    "parity_context",
    "win_rate_conclusion",
]
