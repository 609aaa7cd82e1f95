"""Answer quality metrics: ROUGE-L, chrF, format compliance, refusals and lengths.

Every function here is pure (no model): per-answer scores, then aggregates over a model's answers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rouge_score import rouge_scorer
from sacrebleu.metrics.chrf import CHRF

from tubetune.errors import ConfigError


class Better(str, Enum):
    """Which direction of a metric is an improvement."""

    HIGHER = "higher"
    LOWER = "lower"
    CLOSER_TO_REFERENCE = "closer to reference"


@dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str
    better: Better
    description: str


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("test_loss", "Test loss", Better.LOWER,
               "Mean cross-entropy per assistant token (prompt masked), MLX."),
    MetricInfo("test_perplexity", "Test perplexity", Better.LOWER, "exp(test loss)."),
    MetricInfo("rouge_l", "ROUGE-L F1", Better.HIGHER,
               "Mean ROUGE-L F-measure (stemmed) of the greedy answer against the reference."),
    MetricInfo("chrf", "chrF", Better.HIGHER, "Corpus chrF (sacrebleu, 0-100) against the references."),
    MetricInfo("format_compliance", "Format compliance", Better.HIGHER,
               "Share of answers that end cleanly: stopped by the model, not cut at the token limit, "
               "no leaked special tokens, not empty."),
    MetricInfo("cut_at_max_rate", "Cut at max tokens", Better.LOWER,
               "Share of answers that hit the max_new_tokens limit."),
    MetricInfo("leak_rate", "Leaked special tokens", Better.LOWER,
               "Share of answers that contain special-token text such as <|im_start|>, or a bare role "
               "line (user/assistant/system) left by a chat-turn token."),
    MetricInfo("refusal_rate", "Refusal rate", Better.LOWER,
               "Share of answers matching a refusal pattern (evaluate.refusal_patterns)."),
    MetricInfo("mean_answer_chars", "Mean answer length (chars)", Better.CLOSER_TO_REFERENCE,
               "Mean answer length in characters; the reference mean is shown alongside."),
    MetricInfo("mean_answer_words", "Mean answer length (words)", Better.CLOSER_TO_REFERENCE,
               "Mean answer length in words; the reference mean is shown alongside."),
)
METRIC_BY_NAME = {info.name: info for info in METRICS}


@cache
def _rouge() -> Any:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1] (1 for identical texts, 0 when either is empty)."""
    return float(_rouge().score(reference, prediction)["rougeL"].fmeasure)


def chrf(prediction: str, reference: str) -> float:
    """Sentence-level chrF in [0, 100]."""
    return float(CHRF().sentence_score(prediction, [reference]).score)


def corpus_chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus-level chrF in [0, 100] (character n-gram statistics summed over all answers)."""
    if not predictions:
        return math.nan
    return float(CHRF().corpus_score(list(predictions), [list(references)]).score)


def chrf_statistics(predictions: Sequence[str], references: Sequence[str]) -> list[list[int]]:
    """Each answer's chrF statistics: hypothesis, reference and matching n-gram counts per order
    (sacrebleu's segment statistics, 18 numbers with the default 6 character orders).

    Summed over any subset of the answers they give that subset's corpus chrF
    (:func:`chrf_from_statistics`), which is how a bootstrap resamples corpus chrF without scoring
    the texts again.
    """
    rows = CHRF()._extract_corpus_statistics(list(predictions), [list(references)])
    return [[int(value) for value in row] for row in rows]


def chrf_from_statistics(statistics: Sequence[Sequence[int]] | NDArray[np.int64]) -> float:
    """Corpus chrF in [0, 100] of the answers whose :func:`chrf_statistics` rows are given (NaN for
    none); equal to :func:`corpus_chrf` of the same answers."""
    array = np.asarray(statistics, dtype=np.int64)
    if array.size == 0:
        return math.nan
    return float(CHRF()._compute_f_score(array.sum(axis=0).tolist()))


def compile_patterns(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    """Case-insensitive refusal patterns; a bad expression is a config error naming it."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE))
        except re.error as exc:
            raise ConfigError(
                f"config error: evaluate.refusal_patterns: {pattern!r} is not a regex ({exc})"
            ) from exc
    return tuple(compiled)


def is_refusal(text: str, patterns: Sequence[re.Pattern[str]]) -> bool:
    return any(pattern.search(text) for pattern in patterns)


# llama.cpp renders control tokens (<|im_start|>, <|start_header_id|>, ...) as empty text, so a turn
# marker the model emits without it being an end-of-generation token leaves only the role name:
# "Done.<|im_end|>\n<|im_start|>user\n" reads "Done.\nuser\n" (ChatML) and
# "Done.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" reads "Done.user\n\n" (Llama 3).
ROLE_RESIDUE = re.compile(r"(?:^|\n|[.!?])[ \t]*(?:user|assistant|system)[ \t]*\n")
ROLE_RESIDUE_MARKER = "role header"


def leaked_markers(text: str, markers: Sequence[str]) -> list[str]:
    """Special-token texts (from ``markers``) found in ``text``, in ``markers`` order, then
    ``"role header"`` if a bare role line shows a chat-turn marker that llama.cpp rendered empty."""
    found = [marker for marker in markers if marker in text]
    if ROLE_RESIDUE.search(text):
        found.append(ROLE_RESIDUE_MARKER)
    return found


def word_count(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class FormatCheck:
    """Whether one generated answer ends cleanly, and if not, why."""

    ok: bool
    cut_at_max: bool
    leaked: tuple[str, ...]
    empty: bool
    error: str | None = None

    @property
    def issues(self) -> list[str]:
        issues = []
        if self.error is not None:
            issues.append(f"error: {self.error}")
        if self.cut_at_max:
            issues.append("cut at max tokens")
        if self.leaked:
            issues.append("leaked " + " ".join(self.leaked))
        if self.empty:
            issues.append("empty")
        return issues


def is_cut_at_max(finish_reason: str | None, completion_tokens: int, max_tokens: int) -> bool:
    """True when generation stopped because of the token limit rather than an end-of-turn token."""
    return finish_reason == "length" or (finish_reason != "stop" and completion_tokens >= max_tokens)


def check_format(
    text: str,
    finish_reason: str | None,
    completion_tokens: int,
    max_tokens: int,
    markers: Sequence[str],
    error: str | None = None,
) -> FormatCheck:
    cut = is_cut_at_max(finish_reason, completion_tokens, max_tokens)
    leaked = tuple(leaked_markers(text, markers))
    empty = not text.strip()
    ok = error is None and finish_reason == "stop" and not cut and not leaked and not empty
    return FormatCheck(ok=ok, cut_at_max=cut, leaked=leaked, empty=empty, error=error)


@dataclass(frozen=True)
class AnswerScores:
    """Scores of one generated answer against its reference."""

    rouge_l: float
    chrf: float
    refusal: bool
    format: FormatCheck
    chars: int
    words: int

    def to_json(self) -> dict[str, Any]:
        return {
            "rouge_l": self.rouge_l,
            "chrf": self.chrf,
            "refusal": self.refusal,
            "format_ok": self.format.ok,
            "format_issues": self.format.issues,
            "chars": self.chars,
            "words": self.words,
        }


def score_answer(
    text: str,
    reference: str,
    *,
    finish_reason: str | None,
    completion_tokens: int,
    max_tokens: int,
    refusal_patterns: Sequence[re.Pattern[str]],
    markers: Sequence[str],
    error: str | None = None,
) -> AnswerScores:
    return AnswerScores(
        rouge_l=rouge_l(text, reference),
        chrf=chrf(text, reference),
        refusal=is_refusal(text, refusal_patterns),
        format=check_format(text, finish_reason, completion_tokens, max_tokens, markers, error),
        chars=len(text),
        words=word_count(text),
    )


def clean(value: Any) -> Any:
    """``value`` made JSON-safe: NaN and infinity become null (JSON has no NaN), tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def aggregate_answers(
    texts: Sequence[str], references: Sequence[str], scores: Sequence[AnswerScores]
) -> dict[str, float]:
    """Answer metrics of one model over the whole test set (names as in :data:`METRICS`)."""
    return {
        "rouge_l": _mean([s.rouge_l for s in scores]),
        "chrf": corpus_chrf(texts, references),
        "format_compliance": _mean([float(s.format.ok) for s in scores]),
        "cut_at_max_rate": _mean([float(s.format.cut_at_max) for s in scores]),
        "leak_rate": _mean([float(bool(s.format.leaked)) for s in scores]),
        "refusal_rate": _mean([float(s.refusal) for s in scores]),
        "mean_answer_chars": _mean([float(s.chars) for s in scores]),
        "mean_answer_words": _mean([float(s.words) for s in scores]),
    }


def reference_lengths(references: Sequence[str]) -> dict[str, float]:
    return {
        "mean_answer_chars": _mean([float(len(r)) for r in references]),
        "mean_answer_words": _mean([float(word_count(r)) for r in references]),
    }


def which_is_better(
    name: str, base: float, tuned: float, reference: float | None = None, tolerance: float = 1e-9
) -> str:
    """"base", "tuned" or "tie" for metric ``name`` (NaN on either side gives "n/a")."""
    info = METRIC_BY_NAME[name]
    if math.isnan(base) or math.isnan(tuned):
        return "n/a"
    if info.better is Better.CLOSER_TO_REFERENCE:
        if reference is None or math.isnan(reference):
            return "n/a"
        base, tuned = -abs(base - reference), -abs(tuned - reference)
    elif info.better is Better.LOWER:
        base, tuned = -base, -tuned
    if abs(tuned - base) <= tolerance:
        return "tie"
    return "tuned" if tuned > base else "base"
