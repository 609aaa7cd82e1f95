"""Rule evaluate without a model: bootstrap intervals, delta_ci95 / significant / better, the judge's
verdict and export parity in metrics.json and the report (fixture inputs: tests/eval_inputs.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sacrebleu.metrics.chrf import CHRF

from eval_inputs import N_QUESTIONS, NOT_RUN_REASON, scores_and_answers, write_inputs
from tubetune.errors import InputFileError
from tubetune.evaluate.bootstrap import Interval, index_interval, mean_interval, paired_delta_interval
from tubetune.evaluate.deltas import NOT_SIGNIFICANT, build_metrics, corpus_statistics, weighted_loss
from tubetune.evaluate.metrics import METRICS, chrf_from_statistics, chrf_statistics, corpus_chrf
from tubetune.evaluate.summary import evaluate
from tubetune.evaluate.verdict import win_rate_conclusion
from tubetune.jsonio import write_json

METRIC_NAMES = [info.name for info in METRICS]
SETTINGS = {"seed": 0, "bootstrap_resamples": 2000, "n_side_by_side": 3}


# ---------------------------------------------------------------- bootstrap.py


def test_constant_deltas_give_a_point_interval() -> None:
    interval = paired_delta_interval([1.0] * 12, [1.5] * 12, n_resamples=500, seed=0)
    assert interval == Interval(0.5, 0.5)
    assert interval.excludes(0.0) and not interval.excludes(0.5)
    assert mean_interval([2.0] * 5, n_resamples=200, seed=1) == Interval(2.0, 2.0)


def test_mean_interval_of_a_large_normal_sample_is_the_normal_interval() -> None:
    """For a large sample the percentile bootstrap of a mean approaches mean +- 1.96 sd / sqrt(n)."""
    values = np.random.default_rng(7).normal(2.0, 3.0, size=4000)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values))
    interval = mean_interval(values.tolist(), n_resamples=2000, seed=0)
    assert interval is not None
    assert interval.low == pytest.approx(values.mean() - half, abs=0.15 * half)
    assert interval.high == pytest.approx(values.mean() + half, abs=0.15 * half)


def test_bootstrap_needs_two_questions_is_seeded_and_pairs_lengths() -> None:
    assert mean_interval([1.0], n_resamples=100, seed=0) is None
    assert paired_delta_interval([], [], n_resamples=100, seed=0) is None
    values = np.random.default_rng(1).normal(size=30).tolist()
    assert mean_interval(values, n_resamples=300, seed=4) == mean_interval(values, n_resamples=300, seed=4)
    with pytest.raises(ValueError, match="differ in length"):
        paired_delta_interval([1.0, 2.0], [1.0], n_resamples=100, seed=0)


def test_paired_interval_keeps_each_questions_answers_together() -> None:
    """Questions differ a lot in difficulty, the tuned model is better on each by about 0.1: paired,
    the interval excludes 0; the unpaired spread of the two means would not."""
    rng = np.random.default_rng(2)
    base = rng.uniform(0.0, 1.0, size=26)
    tuned = base + 0.1 + rng.normal(0, 0.01, size=26)
    paired = paired_delta_interval(base.tolist(), tuned.tolist(), n_resamples=2000, seed=0)
    assert paired is not None and paired.excludes(0.0) and 0.09 < paired.low < paired.high < 0.11


# ---------------------------------------------------------------- chrF and the corpus statistics


def test_corpus_chrf_from_statistics_equals_sacrebleu() -> None:
    scores, answers = scores_and_answers()
    for name in ("base", "tuned"):
        texts = [row[name]["answer"] for row in answers]
        references = [row["reference"] for row in answers]
        expected = CHRF().corpus_score(texts, [references]).score
        stats = chrf_statistics(texts, references)
        assert len(stats) == N_QUESTIONS and len(stats[0]) == 18
        assert chrf_from_statistics(stats) == pytest.approx(expected, abs=1e-9)
        assert corpus_chrf(texts, references) == pytest.approx(expected, abs=1e-9)
        # The statistic the bootstrap resamples, on every question once, is sacrebleu's corpus chrF.
        statistic = corpus_statistics(scores["per_question"][name])["chrf"]
        assert statistic(np.arange(N_QUESTIONS)) == pytest.approx(expected, abs=1e-9)
        interval = index_interval(N_QUESTIONS, statistic, n_resamples=1000, seed=0)
        assert interval is not None and interval.low < expected < interval.high
        assert scores["metrics"][name]["chrf"] == pytest.approx(expected, abs=1e-9)
        # A subset's statistics give that subset's corpus chrF.
        subset = [0, 3, 3, 7]
        assert statistic(np.array(subset)) == pytest.approx(
            CHRF().corpus_score([texts[i] for i in subset], [[references[i] for i in subset]]).score)
    assert math.isnan(chrf_from_statistics([]))


def test_token_weighted_loss_resamples_examples_by_their_tokens() -> None:
    loss = weighted_loss([2.0, 4.0, None], [1, 3, 0])  # the third example left no answer token
    assert loss(np.array([0, 1, 2])) == pytest.approx((2.0 + 12.0) / 4)
    assert loss(np.array([0, 0])) == pytest.approx(2.0)
    assert math.isnan(loss(np.array([2, 2])))


# ---------------------------------------------------------------- delta_ci95, significant, better


def test_build_metrics_intervals_and_verdicts_on_fixture_scores() -> None:
    scores, _ = scores_and_answers()
    table = build_metrics(scores["metrics"], scores["reference"], scores["per_question"],
                          n_resamples=2000, seed=0)
    for section in ("base", "tuned", "delta", "delta_ci95", "significant", "better"):
        assert set(table[section]) == set(METRIC_NAMES), section
    # The tuned model always ends cleanly, the base never: a certain difference.
    assert table["delta"]["format_compliance"] == 1.0
    assert table["delta_ci95"]["format_compliance"] == [1.0, 1.0]
    assert table["significant"]["format_compliance"] and table["better"]["format_compliance"] == "tuned"
    # Both refuse the same questions: the interval is [0, 0], no winner.
    assert table["delta_ci95"]["refusal_rate"] == [0.0, 0.0]
    assert not table["significant"]["refusal_rate"]
    assert table["better"]["refusal_rate"] == NOT_SIGNIFICANT
    # Test loss 3.4 vs 2.9 (+- 0.3 per question): lower for the tuned model, clearly.
    low, high = table["delta_ci95"]["test_loss"]
    assert low <= table["delta"]["test_loss"] <= high < 0
    assert table["better"]["test_loss"] == "tuned" and table["better"]["test_perplexity"] == "tuned"
    # The tuned answers are about as long as the references, the base answers far longer.
    assert table["closer_ci95"]["mean_answer_chars"][0] > 0
    assert table["better"]["mean_answer_chars"] == "tuned"
    for name in METRIC_NAMES:
        interval = table["delta_ci95"][name]
        assert interval is not None and interval[0] <= table["delta"][name] + 1e-9, name
        assert table["delta"][name] - 1e-9 <= interval[1], name
        decisive = table["closer_ci95"].get(name, interval)
        named = table["better"][name] in {"tuned", "base"}
        assert named == (decisive[0] > 0 or decisive[1] < 0), name


def test_a_difference_whose_interval_contains_zero_names_no_winner() -> None:
    base = np.random.default_rng(5).uniform(0.1, 0.4, size=26)
    tuned = base + np.resize([0.05, -0.05], 26)  # better on half the questions, worse on the other half
    values = {"base": {"rouge_l": base.tolist()}, "tuned": {"rouge_l": tuned.tolist()}}
    per_model = {"base": {"rouge_l": float(base.mean())}, "tuned": {"rouge_l": float(tuned.mean())}}
    table = build_metrics(per_model, {}, _with_corpus(values), n_resamples=2000, seed=0)
    low, high = table["delta_ci95"]["rouge_l"]
    assert low < 0 < high
    assert table["significant"]["rouge_l"] is False
    assert table["better"]["rouge_l"] == NOT_SIGNIFICANT
    # Without per-question values there is no interval, so no winner either.
    bare = build_metrics(per_model, {})
    assert bare["delta_ci95"]["rouge_l"] is None and bare["better"]["rouge_l"] == NOT_SIGNIFICANT


def _with_corpus(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` plus empty corpus statistics (the metric under test is a mean)."""
    n = len(values["base"]["rouge_l"])
    empty = {"chrf_statistics": [[1] * 18] * n, "loss": [1.0] * n, "loss_tokens": [1] * n}
    return {name: {**empty, **values[name]} for name in ("base", "tuned")}


@pytest.mark.parametrize(
    ("ci95", "expected"),
    [([0.55, 0.8], "above 0.5"), ([0.1, 0.45], "below 0.5"), ([0.4, 0.7], "includes 0.5"),
     (None, "nothing can be concluded")],
)
def test_win_rate_conclusion(ci95: list[float] | None, expected: str) -> None:
    assert expected in win_rate_conclusion(ci95, 26)


# ---------------------------------------------------------------- the evaluate rule's function


def _report(outputs_report: Path) -> str:
    return outputs_report.read_text(encoding="utf-8")


def test_evaluate_with_judge_not_run_says_why_first(tmp_path: Path) -> None:
    inputs, outputs = write_inputs(tmp_path / "in")
    returned = evaluate(inputs, outputs, SETTINGS, run="default")
    metrics = json.loads(outputs.metrics.read_text(encoding="utf-8"))
    assert metrics == returned
    assert (metrics["n_examples"], metrics["n_test_videos"], metrics["train_run"]) == (26, 2, "default")
    assert metrics["judge"] == {"status": "not_run", "reason": NOT_RUN_REASON}
    assert metrics["parity"]["status"] == "ok"
    assert metrics["bootstrap"]["resamples"] == 2000 and metrics["bootstrap"]["seed"] == 0
    assert set(metrics["delta_ci95"]) == set(METRIC_NAMES) == set(metrics["significant"])
    assert metrics["settings"]["bootstrap_resamples"] == 2000 and metrics["settings"]["quant"] == "q8_0"

    html = _report(outputs.report)
    headline = f"The judge was not run: {NOT_RUN_REASON}".replace("'", "&#39;")
    assert headline in html
    assert html.index(headline) < html.index("<h2>Metrics</h2>")
    assert "What the judge decided" not in html
    assert "The judge made no LLM call (it was not run)." in html
    assert "Building the dataset made no LLM call" in html
    assert NOT_SIGNIFICANT in html and "95% interval" in html
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 2  # the deltas and the loss curve
    assert "f16 GGUF in llama.cpp" in html and "transformers is not installed" in html
    assert "&lt;b&gt;dog&lt;/b&gt;" in html and "<b>dog</b>" not in html  # parity texts escaped
    assert 'class="warning"' not in html


def test_evaluate_with_judge_ok_opens_with_the_verdict(tmp_path: Path) -> None:
    inputs, outputs = write_inputs(tmp_path / "in", judge="ok")
    metrics = evaluate(inputs, outputs, SETTINGS, run=None)
    assert metrics["judge"]["tuned_win_rate"] == 0.615 and "train_run" not in metrics

    html = _report(outputs.report)
    headline = "Tuned preferred on 9 of 26 questions (base on 3, ties 14), win rate 0.61 (95% CI 0.46-0.77)."
    assert headline in html
    assert html.index(headline) < html.index('class="llm-cost"') < html.index("<h2>Metrics</h2>")
    assert "The interval includes 0.5: with 26 questions the preference may be chance" in html
    assert "tuned: yes 23, partly 3, no 0 (score 0.94)" in html
    assert "Sounds like the channel (1-5): base 2.20, tuned 2.90" in html
    assert "The judge cost $0.2340 for 52 LLM calls" in html
    # The most telling decisions: each way, widest rating gap first, with reasons, and the flips.
    section = html[html.index("What the judge decided"):html.index('id="parity"')]
    tuned_part = section[section.index("Tuned preferred in both orders"):section.index("Base preferred")]
    base_part = section[section.index("Base preferred in both orders"):section.index("Flipped with")]
    flips = section[section.index("Flipped with the order"):]
    assert tuned_part.index("Question 4:") < tuned_part.index("Question 1:")  # index 3: the widest gap
    assert tuned_part.count('class="case-q"') == 3 and base_part.count('class="case-q"') == 3
    assert base_part.index("Question 11:") < base_part.index("Question 10:")  # index 10 first
    assert "reason 3 base first" in tuned_part and "reason 3 tuned first" in tuned_part
    assert flips.count('class="case-q"') == 2 and "Question 13:" in flips
    assert "Watch the" in tuned_part  # the reference is shown


def test_a_parity_drop_is_flagged_at_the_top(tmp_path: Path) -> None:
    inputs, outputs = write_inputs(tmp_path / "in", parity_drop=True)
    metrics = evaluate(inputs, outputs, SETTINGS, run=None)
    assert metrics["parity"]["status"] == "drop"
    html = _report(outputs.report)
    warning = html.index('<p class="warning">Parity drop: f16 GGUF in llama.cpp')
    assert warning < html.index("<h2>Metrics</h2>")


def test_parity_not_run_is_reported_with_its_reason(tmp_path: Path) -> None:
    inputs, outputs = write_inputs(tmp_path / "in", parity_status="not_run")
    evaluate(inputs, outputs, SETTINGS, run=None)
    assert "The parity check was not run: no f16 GGUF export" in _report(outputs.report)


def test_a_bad_judge_file_is_one_line(tmp_path: Path) -> None:
    inputs, outputs = write_inputs(tmp_path / "in")
    write_json(inputs.judge, {"status": "maybe"})
    with pytest.raises(InputFileError, match=r"judge\.json: status 'maybe' is not one of ok, not_run"):
        evaluate(inputs, outputs, SETTINGS, run=None)
    write_json(inputs.scores, {"n_examples": 3})
    with pytest.raises(InputFileError, match=r"scores\.json: no 'gguf_quant' \(written by an older"):
        evaluate(inputs, outputs, SETTINGS, run=None)


def test_bootstrap_seed_and_resamples_come_from_the_settings(tmp_path: Path) -> None:
    inputs, outputs = write_inputs(tmp_path / "in")
    first = evaluate(inputs, outputs, SETTINGS, run=None)["delta_ci95"]
    assert evaluate(inputs, outputs, SETTINGS, run=None)["delta_ci95"] == first
    other = evaluate(inputs, outputs, {**SETTINGS, "seed": 1, "bootstrap_resamples": 300}, run=None)
    assert other["delta_ci95"]["rouge_l"] != first["rouge_l"]
    assert other["bootstrap"] == {**other["bootstrap"], "seed": 1, "resamples": 300}
