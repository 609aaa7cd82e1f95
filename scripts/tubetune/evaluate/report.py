"""The self-contained evaluation report: one HTML file, inline CSS, the plots as data URIs.

All text from the data (questions, answers, judge reasons, summary values) goes through Jinja2
autoescaping.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from tubetune.errors import InputFileError
from tubetune.evaluate.metrics import METRICS, Better
from tubetune.evaluate.plots import delta_plot_png
from tubetune.evaluate.templates import TEMPLATES
from tubetune.evaluate.verdict import disagreements, judge_context, judge_cost_sentence, parity_context
from tubetune.jsonio import atomic_write_text
from tubetune.llm.spend import LEDGER_MD, cost_sentence

NOT_RUN = {"status": "not_run", "reason": "no result in metrics.json"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PERCENT_METRICS = frozenset({"format_compliance", "cut_at_max_rate", "leak_rate", "refusal_rate"})
DIGITS = {"test_loss": 4, "test_perplexity": 3, "rouge_l": 4, "chrf": 2,
          "mean_answer_chars": 1, "mean_answer_words": 1}
MAX_EXPANDED = 12  # a nested object with more entries (e.g. one per video) is shown as a count
BEST_ITERATION_KEYS = ("best_iteration", "best_iter", "best_step")
BEST_VAL_LOSS_KEYS = ("best_val_loss", "best_valid_loss", "best_validation_loss")


def select_side_by_side(questions: Sequence[str], n: int) -> list[int]:
    """Indices of ``n`` examples chosen by a hash of their question, returned in test-set order.

    The choice depends only on the question texts, so it is the same on every run and an example
    stays chosen when others are added or removed.
    """
    keyed = sorted(
        range(len(questions)),
        key=lambda i: (hashlib.sha256(questions[i].encode("utf-8")).hexdigest(), i),
    )
    return sorted(keyed[: max(n, 0)])


def png_base64(path: Path) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read the loss plot ({exc})") from exc
    if not data.startswith(PNG_SIGNATURE):
        raise InputFileError(f"{path}: not a PNG image")
    return base64.b64encode(data).decode("ascii")


def _format_interval(name: str, interval: Any) -> str:
    if not isinstance(interval, Sequence) or len(interval) != 2 or any(_is_nan(v) for v in interval):
        return "n/a"
    return f"{format_metric(name, interval[0], delta=True)} to {format_metric(name, interval[1], delta=True)}"


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_metric(name: str, value: float | None, *, delta: bool = False) -> str:
    """Human-readable value of metric ``name`` (rates in percent, deltas signed)."""
    if _is_nan(value):
        return "n/a"
    assert value is not None
    sign = "+" if delta and value > 0 else ""
    if name in PERCENT_METRICS:
        return f"{sign}{value * 100:.1f}{' pp' if delta else '%'}"
    return f"{sign}{value:.{DIGITS.get(name, 3)}f}"


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower() if value is not None else "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value) and len(value) <= MAX_EXPANDED:
            return ", ".join(format_value(v) for v in value)
        return f"{len(value)} items"
    return str(value)


def flatten(
    data: Any, prefix: str = "", depth: int = 3, max_expanded: int = MAX_EXPANDED
) -> list[tuple[str, str]]:
    """``(dotted key, text)`` rows of a JSON object; small nested objects expanded ``depth`` levels."""
    if not isinstance(data, Mapping):
        return [(prefix or "value", format_value(data))]
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and depth > 1 and len(value) <= max_expanded:
            rows.extend(flatten(value, name, depth - 1, max_expanded))
        elif isinstance(value, Mapping):
            rows.append((name, f"{len(value)} entries"))
        else:
            rows.append((name, format_value(value)))
    return rows


def find_key(data: Any, names: Sequence[str]) -> Any:
    """The first value under one of ``names`` in a nested JSON object (breadth first), or None."""
    queue = [data]
    while queue:
        node = queue.pop(0)
        if not isinstance(node, Mapping):
            continue
        for name in names:
            if name in node and not isinstance(node[name], (Mapping, list)):
                return node[name]
        queue.extend(v for v in node.values() if isinstance(v, Mapping))
    return None


def training_context(summary: Mapping[str, Any]) -> dict[str, Any]:
    best_iteration = find_key(summary, BEST_ITERATION_KEYS)
    best_val_loss = find_key(summary, BEST_VAL_LOSS_KEYS)
    return {
        "best_iteration": "not recorded" if best_iteration is None else format_value(best_iteration),
        "best_val_loss": "not recorded" if best_val_loss is None else (
            f"{best_val_loss:.4f}" if isinstance(best_val_loss, (int, float)) else str(best_val_loss)
        ),
        "rows": flatten(summary, max_expanded=60),
    }


def metric_rows(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    reference = metrics.get("reference", {})
    for info in METRICS:
        if info.name not in metrics["base"]:
            continue
        direction = {Better.HIGHER: "higher is better", Better.LOWER: "lower is better",
                     Better.CLOSER_TO_REFERENCE: "closer to the reference is better"}[info.better]
        ref = reference.get(info.name)
        rows.append({
            "label": info.label,
            "description": info.description,
            "direction": direction,
            "base": format_metric(info.name, metrics["base"][info.name]),
            "tuned": format_metric(info.name, metrics["tuned"][info.name]),
            "delta": format_metric(info.name, metrics["delta"][info.name], delta=True),
            "interval": _format_interval(info.name, metrics.get("delta_ci95", {}).get(info.name)),
            "significant": "yes" if metrics.get("significant", {}).get(info.name) else "no",
            "better": str(metrics["better"][info.name]),
            "css": str(metrics["better"][info.name]).replace(" ", "-"),
            "reference": "" if ref is None else format_metric(info.name, ref),
        })
    return rows


def _side(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "answer": row["answer"],
        "rouge_l": format_metric("rouge_l", row["rouge_l"]),
        "issues": list(row["format_issues"]) + (["refusal"] if row["refusal"] else []),
    }


def _threads_used(timing: Mapping[str, Any]) -> str:
    """``2 threads`` or, when busy cores took threads away, ``2 threads (1 for 5 of 52 answers)``."""
    used: dict[str, int] = {}
    for name in ("base", "tuned"):
        for threads, count in ((timing.get(name) or {}).get("threads_used") or {}).items():
            used[threads] = used.get(threads, 0) + int(count)
    limit = timing["threads"]
    fewer = {k: v for k, v in used.items() if int(k) < int(limit)}
    if not fewer:
        return f"{limit} threads"
    total = sum(used.values())
    detail = ", ".join(f"{k} for {v} of {total} answers" for k, v in sorted(fewer.items()))
    return f"{limit} threads ({detail}: other processes kept cores busy)"


def _tps(value: Any) -> str:
    return "n/a" if _is_nan(value) else f"{value:.1f}"


def _cards(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    videos = metrics.get("n_test_videos")
    return [
        {"label": "ROUGE-L, base -> tuned", "value": "{} -> {}".format(
            format_metric("rouge_l", metrics["base"]["rouge_l"]),
            format_metric("rouge_l", metrics["tuned"]["rouge_l"]))},
        {"label": "test loss, base -> tuned", "value": "{} -> {}".format(
            format_metric("test_loss", metrics["base"]["test_loss"]),
            format_metric("test_loss", metrics["tuned"]["test_loss"]))},
        {"label": "format compliance, tuned", "value": format_metric(
            "format_compliance", metrics["tuned"]["format_compliance"])},
        {"label": "test questions" + (f" from {videos} video{'s' if videos != 1 else ''}" if videos else ""),
         "value": str(metrics["n_examples"])},
    ]


def _cost(llm_cost: Mapping[str, Any] | None, judge: Mapping[str, Any]) -> dict[str, str] | None:
    if llm_cost is None:
        return None
    return {"sentence": cost_sentence(llm_cost), "ledger": LEDGER_MD, "judge": judge_cost_sentence(judge)}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_report(
    metrics: Mapping[str, Any],
    answers: Sequence[Mapping[str, Any]],
    side_by_side: Sequence[int],
    *,
    loss_png: Path,
    train_summary: Mapping[str, Any],
    dataset_stats: Mapping[str, Any],
    title: str = "tubetune evaluation: base vs tuned",
    run: str | None = None,
    llm_cost: Mapping[str, Any] | None = None,
    judge_rows: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The report HTML (self-contained: no external CSS, script or image). It opens with the judge's
    verdict (``metrics["judge"]``, or why the judge was not run), then the metric table with each
    delta's interval and a picture of them, the judge's most telling decisions (``judge_rows``, rows
    of judge.jsonl), export parity (``metrics["parity"]``), training, dataset and side by side.

    ``run``: the training run fused into the tuned model (the winner of the sweep); ``llm_cost``: the
    LLM ledger's total behind the dataset (:func:`tubetune.llm.spend.ledger_cost`), shown near the top
    with the judge's cost, or None for no cost line."""
    judge = metrics.get("judge") or NOT_RUN
    parity = metrics.get("parity") or NOT_RUN
    timing = metrics["timing"]
    plot = delta_plot_png(metrics)
    bootstrap = metrics.get("bootstrap") or {}
    context = {
        "title": title,
        "n_examples": metrics["n_examples"],
        "n_test_videos": metrics.get("n_test_videos"),
        "quant": metrics["gguf_quant"],
        "max_new_tokens": metrics["max_new_tokens"],
        "judge": judge_context(judge),
        "cards": _cards(metrics),
        "metric_rows": metric_rows(metrics),
        "resamples": bootstrap.get("resamples"),
        "delta_png": None if plot is None else base64.b64encode(plot).decode("ascii"),
        "cases": disagreements(judge_rows, answers) if judge.get("status") == "ok" else None,
        "parity": parity_context(parity),
        "timing": {
            "base_tps": _tps(timing["base"]["generation_tokens_per_s"]),
            "tuned_tps": _tps(timing["tuned"]["generation_tokens_per_s"]),
            "threads": timing["threads"],
            "threads_used": _threads_used(timing),
            "total": f"{timing['total_seconds']:.1f}",
        },
        "training": training_context(train_summary),
        "run": run,
        "llm_cost": _cost(llm_cost, judge),
        "loss_png": png_base64(loss_png),
        "dataset_rows": flatten(dataset_stats),
        "side_by_side": [
            {
                "question": answers[i]["question"],
                "reference": answers[i]["reference"],
                "base": _side(answers[i]["base"]),
                "tuned": _side(answers[i]["tuned"]),
            }
            for i in side_by_side
        ],
        "models": metrics["models"],
    }
    return _environment().get_template("report.html.j2").render(context)


def write_report(path: Path, html: str) -> None:
    atomic_write_text(path, html)
