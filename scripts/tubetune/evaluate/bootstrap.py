"""Bootstrap 95% intervals over test questions (scipy.stats.bootstrap, percentile method).

Every interval resamples whole questions with replacement, so a paired comparison (base and tuned
answered the same questions) keeps each question's two answers together: the interval of a delta
is the spread of ``statistic(tuned) - statistic(base)`` over resampled question sets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import bootstrap

CONFIDENCE = 0.95

IndexStatistic = Callable[[NDArray[np.intp]], float]


@dataclass(frozen=True)
class Interval:
    """A confidence interval ``[low, high]``."""

    low: float
    high: float

    def excludes(self, value: float = 0.0) -> bool:
        """True when ``value`` lies outside the interval (a difference from it is significant)."""
        return value < self.low or value > self.high

    def to_json(self) -> list[float]:
        return [self.low, self.high]


def index_interval(
    n: int, statistic: IndexStatistic, *, n_resamples: int, seed: int, confidence: float = CONFIDENCE
) -> Interval | None:
    """The interval of ``statistic(indices)`` over ``n_resamples`` resamples of the question indices
    ``0..n-1``; None for fewer than two questions (nothing to resample)."""
    if n < 2:
        return None
    indices = np.arange(n)

    def on_sample(sample: NDArray[np.intp]) -> float:
        return float(statistic(sample.astype(np.intp)))

    result = bootstrap(
        (indices,), on_sample, n_resamples=n_resamples, confidence_level=confidence,
        method="percentile", vectorized=False, rng=np.random.default_rng(seed),
    )
    return Interval(float(result.confidence_interval.low), float(result.confidence_interval.high))


def mean_interval(
    values: Sequence[float], *, n_resamples: int, seed: int, confidence: float = CONFIDENCE
) -> Interval | None:
    """The interval of the mean of ``values`` (one value per question)."""
    array = np.asarray(values, dtype=float)
    return index_interval(
        len(array), lambda idx: float(array[idx].mean()), n_resamples=n_resamples, seed=seed,
        confidence=confidence,
    )


def paired_delta_interval(
    base: Sequence[float], tuned: Sequence[float], *, n_resamples: int, seed: int,
    confidence: float = CONFIDENCE,
) -> Interval | None:
    """The interval of ``mean(tuned) - mean(base)`` over the same questions (paired)."""
    if len(base) != len(tuned):
        raise ValueError(f"paired values differ in length: {len(base)} base vs {len(tuned)} tuned")
    difference = np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)
    return mean_interval(difference.tolist(), n_resamples=n_resamples, seed=seed, confidence=confidence)

