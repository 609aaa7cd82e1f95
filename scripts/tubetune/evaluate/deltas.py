"""The metric table of metrics.json: base, tuned, their delta and its paired bootstrap 95% interval.

Every interval resamples the test questions (both models' answers to a question stay together) with
:mod:`tubetune.evaluate.bootstrap`: per-question means (ROUGE-L, the rates, the lengths) through
:func:`~tubetune.evaluate.bootstrap.paired_delta_interval`; corpus statistics (corpus chrF from
summed chrF statistics, the token-weighted test loss and its perplexity) through
:func:`~tubetune.evaluate.bootstrap.index_interval`. All use the same seed, so they see the same
resampled question sets.

A model is named ``better`` only when the difference is significant (its interval excludes 0);
otherwise ``better`` says "not significant". For the lengths, where closer to the reference mean is
better, the interval that decides is that of ``|base - reference| - |tuned - reference|``
(``closer_ci95``: positive when the tuned model is closer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tubetune.evaluate.bootstrap import Interval, index_interval, paired_delta_interval
from tubetune.evaluate.metrics import METRIC_BY_NAME, METRICS, Better, chrf_from_statistics, which_is_better

NOT_SIGNIFICANT = "not significant"
# Per-question means: metric -> the per-question key in scores.json
MEAN_METRICS = {
    "rouge_l": "rouge_l",
    "format_compliance": "format_ok",
    "cut_at_max_rate": "cut_at_max",
    "leak_rate": "leak",
    "refusal_rate": "refusal",
    "mean_answer_chars": "chars",
    "mean_answer_words": "words",
}
REFERENCE_KEYS = {"mean_answer_chars": "reference_chars", "mean_answer_words": "reference_words"}

Indices = NDArray[np.intp]
ModelStatistic = Callable[[Indices], float]


def _array(values: Sequence[Any]) -> NDArray[np.float64]:
    return np.asarray([math.nan if v is None else float(v) for v in values], dtype=float)


def weighted_loss(losses: Sequence[float | None], tokens: Sequence[int]) -> ModelStatistic:
    """The token-weighted mean loss of the questions at the given indices (an example whose prompt
    left no answer token has no loss and no weight)."""
    weights = np.asarray(tokens, dtype=float)
    sums = np.nan_to_num(_array(losses)) * weights

    def statistic(idx: Indices) -> float:
        total = float(weights[idx].sum())
        return float(sums[idx].sum()) / total if total > 0 else math.nan

    return statistic


def corpus_statistics(per_model: Mapping[str, Any]) -> dict[str, ModelStatistic]:
    """Metric -> statistic of one model over a set of question indices, for the corpus metrics."""
    chrf_rows = np.asarray(per_model["chrf_statistics"], dtype=np.int64)
    loss = weighted_loss(per_model["loss"], per_model["loss_tokens"])
    return {
        "chrf": lambda idx: chrf_from_statistics(chrf_rows[idx]),
        "test_loss": loss,
        "test_perplexity": lambda idx: math.exp(loss(idx)),
    }


def _difference(base: ModelStatistic, tuned: ModelStatistic) -> ModelStatistic:
    return lambda idx: tuned(idx) - base(idx)


def delta_intervals(
    names: Sequence[str], values: Mapping[str, Any], *, n_resamples: int, seed: int
) -> dict[str, Interval | None]:
    """Metric -> the paired bootstrap 95% interval of tuned - base (None: fewer than two questions,
    or no per-question values for that metric)."""
    base, tuned = values["base"], values["tuned"]
    corpus = {"base": corpus_statistics(base), "tuned": corpus_statistics(tuned)}
    n = len(base["rouge_l"])
    intervals: dict[str, Interval | None] = {}
    for name in names:
        if name in MEAN_METRICS:
            key = MEAN_METRICS[name]
            intervals[name] = paired_delta_interval(
                _array(base[key]).tolist(), _array(tuned[key]).tolist(), n_resamples=n_resamples, seed=seed
            )
        elif name in corpus["base"]:
            difference = _difference(corpus["base"][name], corpus["tuned"][name])
            intervals[name] = index_interval(n, difference, n_resamples=n_resamples, seed=seed)
        else:
            intervals[name] = None
    return intervals


def closer_intervals(
    names: Sequence[str], values: Mapping[str, Any], *, n_resamples: int, seed: int
) -> dict[str, Interval | None]:
    """Metric -> interval of ``|base - reference| - |tuned - reference|`` (mean lengths over the same
    resampled questions) for the metrics where closer to the reference is better."""
    intervals: dict[str, Interval | None] = {}
    for name in names:
        if METRIC_BY_NAME[name].better is not Better.CLOSER_TO_REFERENCE or name not in REFERENCE_KEYS:
            continue
        key = MEAN_METRICS[name]
        base, tuned = _array(values["base"][key]), _array(values["tuned"][key])
        reference = _array(values[REFERENCE_KEYS[name]])

        def statistic(idx: Indices, b: Any = base, t: Any = tuned, r: Any = reference) -> float:
            target = r[idx].mean()
            return float(abs(b[idx].mean() - target) - abs(t[idx].mean() - target))

        intervals[name] = index_interval(len(base), statistic, n_resamples=n_resamples, seed=seed)
    return intervals


def verdict(name: str, base: float, tuned: float, reference: float | None, decisive: Interval | None) -> str:
    """"tuned" or "base" when ``decisive`` (the interval that decides) excludes 0, else
    "not significant"; "n/a" when a value is missing."""
    if math.isnan(base) or math.isnan(tuned):
        return "n/a"
    winner = which_is_better(name, base, tuned, reference)
    if winner == "n/a":
        return winner
    if decisive is None or not decisive.excludes(0.0) or winner == "tie":
        return NOT_SIGNIFICANT
    return winner


def build_metrics(
    per_model: Mapping[str, Mapping[str, float | None]],
    reference: Mapping[str, float],
    values: Mapping[str, Any] | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """``base``, ``tuned``, ``delta`` (tuned - base), ``delta_ci95``, ``significant`` and ``better``
    for every metric; ``values``: the per-question values of scores.json (None: no intervals, so no
    difference is significant)."""
    names = [info.name for info in METRICS if info.name in per_model["base"]]

    def number(value: float | None) -> float:
        return math.nan if value is None else float(value)

    base = {name: number(per_model["base"][name]) for name in names}
    tuned = {name: number(per_model["tuned"][name]) for name in names}
    intervals: dict[str, Interval | None] = dict.fromkeys(names)
    closer: dict[str, Interval | None] = {}
    if values is not None:
        intervals = delta_intervals(names, values, n_resamples=n_resamples, seed=seed)
        closer = closer_intervals(names, values, n_resamples=n_resamples, seed=seed)
    decisive = {name: closer.get(name, intervals[name]) for name in names}
    return {
        "base": base,
        "tuned": tuned,
        "delta": {name: tuned[name] - base[name] for name in names},
        "delta_ci95": {name: None if iv is None else iv.to_json() for name, iv in intervals.items()},
        "significant": {name: iv is not None and iv.excludes(0.0) for name, iv in intervals.items()},
        "better": {
            name: verdict(name, base[name], tuned[name], reference.get(name), decisive[name])
            for name in names
        },
        "closer_ci95": {name: None if iv is None else iv.to_json() for name, iv in closer.items()},
        "reference": dict(reference),
        "metric_info": {
            info.name: {"label": info.label, "better": info.better.value, "description": info.description}
            for info in METRICS if info.name in names
        },
    }


__all__ = ["NOT_SIGNIFICANT", "build_metrics", "closer_intervals", "delta_intervals", "weighted_loss"]
