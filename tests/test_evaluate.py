"""Step 12, answer_test and evaluate: metric functions, the masked test loss, and an end-to-end run on
real models (the intervals and the report from fixture inputs: tests/test_evaluate_intervals.py).

The end-to-end run uses the bundled SmolLM2 GGUF as both "base" and "tuned" GGUF and the converted
base model dir as both MLX models, so every delta must be exactly zero (greedy, same weights).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from eval_inputs import judge_not_run, parity
from tubetune.config import section_config, validate_config
from tubetune.errors import ConfigError, InputFileError
from tubetune.evaluate.deltas import NOT_SIGNIFICANT, build_metrics
from tubetune.evaluate.metrics import (
    METRICS,
    check_format,
    chrf,
    chrf_from_statistics,
    compile_patterns,
    corpus_chrf,
    is_cut_at_max,
    is_refusal,
    leaked_markers,
    rouge_l,
    which_is_better,
)
from tubetune.evaluate.report import flatten, render_report, select_side_by_side
from tubetune.evaluate.run import AnswerInputs, AnswerOutputs, answer_test, generation_settings, read_test_set
from tubetune.evaluate.settings import AnswerSettings, ReportSettings, evaluate_settings, section_part
from tubetune.evaluate.summary import EvaluateInputs, EvaluateOutputs, evaluate
from tubetune.jsonio import write_json
from tubetune.llm.ledger import llm_ledger

ROOT = Path(__file__).resolve().parents[1]
METRIC_NAMES = [info.name for info in METRICS]
DEFAULTS = evaluate_settings(AnswerSettings, section_config("evaluate"))
PATTERNS = compile_patterns(DEFAULTS.refusal_patterns)
LEAK_MARKERS = DEFAULTS.leak_markers
Model = tuple[Any, Any]  # an mlx-lm model and its tokenizer
Rows = list[dict[str, Any]]


# ---------------------------------------------------------------- metrics on hand-made cases


def test_rouge_l_identical_disjoint_and_partial() -> None:
    text = "Feed it once a day at room temperature."
    assert rouge_l(text, text) == pytest.approx(1.0)
    assert rouge_l("banana bread", "sourdough starter") == 0.0
    assert rouge_l("", text) == 0.0
    # LCS "feed it once a day" = 5 of 5 prediction words and 5 of 8 reference words.
    assert rouge_l("feed it once a day", text) == pytest.approx(2 * 1.0 * (5 / 8) / (1.0 + 5 / 8))


def test_chrf_sentence_and_corpus() -> None:
    assert chrf("Use rye flour.", "Use rye flour.") == pytest.approx(100.0)
    assert chrf("zzzz", "Use rye flour.") == 0.0
    partial = chrf("Use rye.", "Use rye flour.")
    assert 0.0 < partial < 100.0
    same = ["Use rye flour.", "Bake hot."]
    assert corpus_chrf(same, same) == pytest.approx(100.0)
    assert math.isnan(corpus_chrf([], []))


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("I can't help with that question.", True),
        ("i CANNOT answer that", True),
        ("As an AI language model, I have no oven.", True),
        ("I'm sorry, but that is outside what I know.", True),
        ("I don't know which flour they used.", True),
        ("Feed it once a day; you cannot overfeed a starter by much.", False),
        ("Scan the crumb: if you can see big holes, it proofed well.", False),
    ],
)
def test_refusal_patterns(text: str, refusal: bool) -> None:
    assert is_refusal(text, PATTERNS) is refusal


def test_bad_refusal_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"evaluate\.refusal_patterns: '\(unclosed'"):
        compile_patterns(["(unclosed"])


def test_leaked_special_tokens_make_an_answer_non_compliant() -> None:
    answer = "Feed it daily.<|im_end|>\n<|im_start|>user\nAnd rye?"
    assert leaked_markers(answer, LEAK_MARKERS) == ["<|im_start|>", "<|im_end|>"]
    assert leaked_markers("Bake at 250 degrees <3", LEAK_MARKERS) == []
    check = check_format(answer, "stop", 20, 64, LEAK_MARKERS)
    assert not check.ok
    assert check.leaked == ("<|im_start|>", "<|im_end|>")
    assert check.issues == ["leaked <|im_start|> <|im_end|>"]
    assert not check_format("Done.<|eot_id|>", "stop", 3, 64, LEAK_MARKERS).ok
    # Control tokens come out of llama.cpp as empty text: only the role name of the next turn is left.
    assert leaked_markers("Feed it daily.\nuser\nAnd rye?", LEAK_MARKERS) == ["role header"]
    assert leaked_markers("Feed it daily.user\n\nAnd rye?", LEAK_MARKERS) == ["role header"]
    assert leaked_markers("Ask your assistant\nto help.", LEAK_MARKERS) == []
    assert leaked_markers("Every user should feed it daily.\n", LEAK_MARKERS) == []


def test_cut_at_max_tokens_detection() -> None:
    assert is_cut_at_max("length", 64, 64)
    assert not is_cut_at_max("stop", 64, 64)  # the end-of-turn token came exactly at the limit
    assert not is_cut_at_max("stop", 10, 64)
    assert is_cut_at_max(None, 64, 64)
    check = check_format("Preheat the oven to 250 degrees and", "length", 64, 64, LEAK_MARKERS)
    assert (check.ok, check.cut_at_max, check.issues) == (False, True, ["cut at max tokens"])


def test_clean_empty_and_failed_answers() -> None:
    assert check_format("Preheat to 250 degrees.", "stop", 6, 64, LEAK_MARKERS).ok
    empty = check_format("  \n", "stop", 1, 64, LEAK_MARKERS)
    assert (empty.ok, empty.issues) == (False, ["empty"])
    failed = check_format("", None, 0, 64, LEAK_MARKERS, error="prompt too long")
    assert not failed.ok
    assert failed.issues[0] == "error: prompt too long"


def test_which_is_better_follows_each_metric_direction() -> None:
    assert which_is_better("test_loss", 2.0, 1.5) == "tuned"
    assert which_is_better("rouge_l", 0.30, 0.20) == "base"
    assert which_is_better("refusal_rate", 0.0, 0.25) == "base"
    assert which_is_better("chrf", 40.0, 40.0) == "tie"
    assert which_is_better("mean_answer_chars", 400.0, 130.0, reference=120.0) == "tuned"
    assert which_is_better("mean_answer_words", 10.0, 40.0, reference=20.0) == "base"
    assert which_is_better("mean_answer_words", 10.0, 40.0) == "n/a"
    assert which_is_better("rouge_l", math.nan, 0.2) == "n/a"


def test_build_metrics_has_base_tuned_delta_and_better_for_every_metric() -> None:
    """Without per-question values there are no intervals: no model is named better."""
    base = {name: 1.0 for name in METRIC_NAMES}
    tuned = {name: 1.5 for name in METRIC_NAMES}
    reference = {"mean_answer_chars": 1.6, "mean_answer_words": 0.5}
    metrics = build_metrics({"base": base, "tuned": tuned}, reference)
    for section in ("base", "tuned", "delta", "delta_ci95", "significant", "better", "metric_info"):
        assert set(metrics[section]) == set(METRIC_NAMES), section
    assert metrics["delta"]["rouge_l"] == pytest.approx(0.5)
    assert set(metrics["better"].values()) == {NOT_SIGNIFICANT}
    assert set(metrics["delta_ci95"].values()) == {None} and not any(metrics["significant"].values())
    nan = build_metrics({"base": {"rouge_l": None}, "tuned": {"rouge_l": 0.2}}, {})
    assert nan["better"]["rouge_l"] == "n/a"


def test_side_by_side_choice_is_deterministic_and_in_test_order() -> None:
    questions = [f"Question number {i}?" for i in range(20)]
    chosen = select_side_by_side(questions, 8)
    assert chosen == select_side_by_side(list(questions), 8)
    assert chosen == sorted(chosen) and len(set(chosen)) == 8
    assert chosen != list(range(8))  # chosen by hash, not the first eight
    # The choice depends on the texts, not on their position.
    reversed_chosen = select_side_by_side(questions[::-1], 8)
    assert sorted(questions[::-1][i] for i in reversed_chosen) == sorted(questions[i] for i in chosen)
    assert select_side_by_side(questions[:3], 8) == [0, 1, 2]
    assert select_side_by_side(questions, 0) == []


def test_flatten_expands_small_objects_and_counts_big_ones() -> None:
    rows = dict(flatten({"examples": {"train": 48, "test": 8}, "per_video": {f"v{i}": {} for i in range(30)},
                         "videos": ["a", "b"], "ok": True, "loss": 1.234567891}))
    assert rows == {"examples.train": "48", "examples.test": "8", "per_video": "30 entries",
                    "videos": "a, b", "ok": "true", "loss": "1.23457"}


def _llm_cost(calls: int, dollars: float | None, unpriced: list[str] | None = None) -> dict[str, Any]:
    return {
        "requests": calls + 3, "cache_hits": 3, "calls": calls, "input_tokens": 1000 * calls,
        "output_tokens": 200 * calls, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
        "dollars": dollars, "unpriced_models": unpriced or [],
    }


def _render(tmp_path: Path, llm_cost: dict[str, Any] | None) -> str:
    metrics = build_metrics(
        {"base": dict.fromkeys(METRIC_NAMES, 1.0), "tuned": dict.fromkeys(METRIC_NAMES, 0.5)}, {}
    ) | {
        "n_examples": 4, "gguf_quant": "q8_0", "max_new_tokens": 16,
        "timing": {"base": {"generation_tokens_per_s": 30.0}, "tuned": {"generation_tokens_per_s": 31.0},
                   "threads": 1, "total_seconds": 2.5},
        "models": {"base_gguf": "b.gguf", "tuned_gguf": "t.gguf", "base_model": "b", "tuned_model": "t"},
    }
    _write_loss_png(tmp_path / "loss.png")
    return render_report(metrics, [], [], loss_png=tmp_path / "loss.png", train_summary={},
                         dataset_stats={}, llm_cost=llm_cost)


LEDGER_LINK = (' (<a href="../llm/ledger.md">results/llm/ledger.md</a>). '
               "The judge made no LLM call (it was not run).")


@pytest.mark.parametrize(
    ("cost", "line"),
    [
        (_llm_cost(8, 1.7025), "Building the dataset cost $1.70 for 8 LLM calls"),
        (_llm_cost(1, 0.0123), "Building the dataset cost $0.0123 for 1 LLM call"),
        (_llm_cost(1200, 0.0), "Building the dataset cost $0 for 1,200 LLM calls"),  # a local model
        (
            _llm_cost(0, 0.0),
            "Building the dataset made no LLM call (all LLM replies came from the cache): $0",
        ),
        (
            _llm_cost(8, None, ["claude-future-9"]),
            "Building the dataset cost an unknown amount for 8 LLM calls; "
            "no price for claude-future-9 in llm.prices",
        ),
    ],
)
def test_report_says_what_the_dataset_cost_near_the_top(
    tmp_path: Path, cost: dict[str, Any], line: str
) -> None:
    html = _render(tmp_path, cost)
    assert f'<p class="llm-cost">{line}{LEDGER_LINK}</p>' in html
    assert html.index('class="llm-cost"') < html.index('<div class="cards">') < html.index("<h2>Metrics</h2>")


def test_report_without_a_ledger_has_no_cost_line(tmp_path: Path) -> None:
    html = _render(tmp_path, None)
    assert 'class="llm-cost"' not in html and "Building the dataset" not in html


def test_settings_are_the_schema_section() -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    config["evaluate"] = {}
    validate_config(config, ROOT / "config.schema.yaml")
    assert evaluate_settings(AnswerSettings, config["evaluate"]) == DEFAULTS
    assert (DEFAULTS.quant, DEFAULTS.max_examples, len(DEFAULTS.leak_markers)) == ("q8_0", None, 9)
    report = evaluate_settings(ReportSettings, config["evaluate"])
    assert (report.seed, report.bootstrap_resamples, report.n_side_by_side) == (0, 2000, 8)
    # Each rule's params are its own keys: answer_test's have no report or interval key, and back.
    answer_keys = set(section_part(AnswerSettings, config["evaluate"]))
    report_keys = set(section_part(ReportSettings, config["evaluate"]))
    assert "bootstrap_resamples" not in answer_keys and "n_side_by_side" not in answer_keys
    assert answer_keys & report_keys == {"seed"}
    with pytest.raises(ConfigError, match="evaluate: missing key 'quant'"):
        evaluate_settings(AnswerSettings, {})
    generation = generation_settings(DEFAULTS, threads=0)
    assert (generation.max_new_tokens, generation.n_ctx, generation.n_threads) == (256, 2048, 1)


@pytest.mark.parametrize(("key", "value"), [("quant", "q5_k"), ("bootstrap_resamples", 50), ("quantt", 1)])
def test_config_schema_rejects_a_bad_evaluate_value(key: str, value: object) -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    config["evaluate"] = {key: value}
    with pytest.raises(ConfigError, match=rf"evaluate\.{key}|'{key}'"):
        validate_config(config, ROOT / "config.schema.yaml")


def test_the_sample_config_splits_two_test_videos_worth() -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    assert config["dataset"]["split"] == {"train": 0.7, "valid": 0.1, "test": 0.2}


def test_read_test_set_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    good = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    bad = {"messages": [{"role": "user", "content": "Q?"}, {"role": "user", "content": "again?"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(InputFileError, match=r"test\.jsonl:2: the last message must be the assistant"):
        read_test_set(path)
    assert [e.question for e in read_test_set(path, max_examples=1)] == ["Q?"]
    path.write_text("", encoding="utf-8")
    with pytest.raises(InputFileError, match="the test split is empty"):
        read_test_set(path)


# ---------------------------------------------------------------- masked test loss (MLX)


@pytest.fixture(scope="module")
def mlx_model(base_model_dir: Path) -> tuple[Any, Any]:
    from tubetune.train.loss import load_model

    return load_model(base_model_dir)


@pytest.fixture(scope="module")
def chat_rows(chat_dataset_dir: Path) -> list[dict[str, Any]]:
    return [{"messages": e.messages} for e in read_test_set(chat_dataset_dir / "test.jsonl")]


def _hand_loss(model: Any, tokenizer: Any, messages: list[dict[str, str]], masked: bool) -> tuple[float, int]:
    """Mean negative log-likelihood of the scored tokens, straight from the model's logits."""
    import mlx.core as mx
    import numpy as np

    tokens = list(tokenizer.apply_chat_template(messages, return_dict=False))
    prompt = list(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=False))
    assert tokens[: len(prompt)] == prompt  # the prompt is a prefix of the whole conversation
    logits = np.array(model(mx.array(tokens)[None]).astype(mx.float32))[0].astype(np.float64)
    peak = logits.max(-1, keepdims=True)
    logprobs = logits - peak - np.log(np.exp(logits - peak).sum(-1, keepdims=True))
    first = len(prompt) if masked else 1
    scored = [-logprobs[t - 1, tokens[t]] for t in range(first, len(tokens))]
    return float(np.mean(scored)), len(scored)


@pytest.mark.slow  # loads a model
def test_masked_loss_equals_hand_computed_and_differs_from_unmasked(
    mlx_model: Model, chat_rows: Rows
) -> None:
    from tubetune.train.loss import dataset_loss

    model, tokenizer = mlx_model
    # The shortest example batched with the longest one: it is right padded, and padding must not count.
    by_length = sorted(chat_rows, key=lambda r: len(json.dumps(r)))
    row, longer = by_length[0], by_length[-1]
    masked = dataset_loss(model, tokenizer, [row, longer], batch_size=2, max_seq_length=2048).examples[0]
    unmasked = dataset_loss(
        model, tokenizer, [row, longer], batch_size=2, max_seq_length=2048, mask_prompt=False
    ).examples[0]
    hand_masked, n_masked = _hand_loss(model, tokenizer, row["messages"], masked=True)
    hand_unmasked, n_unmasked = _hand_loss(model, tokenizer, row["messages"], masked=False)

    assert masked.n_tokens == n_masked  # only assistant tokens, no padding position
    assert masked.loss == pytest.approx(hand_masked, abs=1e-3)
    assert unmasked.n_tokens == n_unmasked
    assert unmasked.loss == pytest.approx(hand_unmasked, abs=1e-3)
    assert n_masked < n_unmasked
    assert masked.loss is not None and unmasked.loss is not None
    assert abs(masked.loss - unmasked.loss) > 0.05



@pytest.mark.slow  # loads a model
def test_loss_same_for_any_batch_size_and_via_mlx_lm_evaluate(mlx_model: Model, chat_rows: Rows) -> None:
    from mlx_lm.tuner.trainer import evaluate as mlx_evaluate

    from tubetune.train.loss import chat_dataset, dataset_loss, masked_loss

    model, tokenizer = mlx_model
    rows = chat_rows[:3]
    one = dataset_loss(model, tokenizer, rows, batch_size=1, max_seq_length=2048)
    two = dataset_loss(model, tokenizer, rows, batch_size=2, max_seq_length=2048)  # last batch partial
    assert len(two.examples) == len(rows)
    assert two.n_tokens == one.n_tokens
    assert two.loss == pytest.approx(one.loss, abs=1e-5)
    for a, b in zip(one.examples, two.examples, strict=True):
        assert a.n_tokens == b.n_tokens
        assert a.loss == pytest.approx(b.loss, abs=1e-4)
    # masked_loss is a drop-in loss for mlx-lm's own evaluation loop.
    dataset = chat_dataset(rows, tokenizer)
    via_mlx = mlx_evaluate(model, dataset, batch_size=len(rows), num_batches=-1, loss=masked_loss)
    assert via_mlx == pytest.approx(one.loss, abs=1e-5)


@pytest.mark.slow  # loads a model
def test_truncated_prompt_leaves_nothing_to_score(mlx_model: Model, chat_rows: Rows) -> None:
    from tubetune.train.loss import dataset_loss

    model, tokenizer = mlx_model
    with pytest.raises(InputFileError, match="loss_max_seq_length 40 too small"):
        dataset_loss(model, tokenizer, chat_rows[:2], batch_size=2, max_seq_length=40)


# ---------------------------------------------------------------- end to end


def _write_loss_png(path: Path) -> None:
    from eval_inputs import write_loss_png

    write_loss_png(path)


def _test_split(tmp_path: Path, chat_dataset_dir: Path) -> Path:
    """Three test chats of the chat dataset and a tricky one (HTML in the question and the answer)."""
    rows = [json.loads(line) for line in (chat_dataset_dir / "test.jsonl").read_text().splitlines()][:3]
    tricky = {
        "messages": [
            dict(rows[0]["messages"][0]),
            {"role": "user", "content": "Is <script>alert(1)</script> & 'flour < water' a recipe?"},
            {"role": "assistant", "content": "No: keep <b>water</b> at 70 percent & flour at 100."},
        ],
        "meta": {"id": "tricky"},
    }
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in [*rows, tricky]), encoding="utf-8")
    return test


def _report_inputs(tmp_path: Path, scores: Path, answers: Path) -> EvaluateInputs:
    """The evaluate rule's other inputs: judge not run, parity ok, a summary, stats and a ledger."""
    summary = {
        "settings": {"fine_tune_type": "lora", "iters": 200, "learning_rate": 1e-4, "batch_size": 4},
        "best_iteration": 150,
        "best_val_loss": 1.4321,
        "initial_val_loss": 2.2,
        "iterations_run": 200,
        "tokens_per_second_mean": 220.5,
        "blas": "OpenBLAS",
    }
    stats = {
        "channel": "@crumblab",
        "examples": {"train": 48, "valid": 8, "test": 4, "total": 60},
        "lengths_chars": {"answer": {"mean": 82.5, "median": 80, "p95": 97, "max": 99}},
        "per_video": {f"vid{i:08d}xx": {"examples": 8} for i in range(8)},
        "dropped": {"near_duplicate": 3},
        "dropped_total": 3,
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (tmp_path / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    _write_loss_png(tmp_path / "loss.png")
    write_json(tmp_path / "judge.json", judge_not_run())
    (tmp_path / "judge.jsonl").write_text("", encoding="utf-8")
    write_json(tmp_path / "parity.json", parity())
    usage = {"pass": "questions", "backend": "llama_cpp", "model": "gguf:teacher.gguf", "requests": 9,
             "cache_hits": 4, "calls": 5, "input_tokens": 5000, "output_tokens": 900}
    write_json(tmp_path / "usage.json", usage)
    llm_ledger([tmp_path / "usage.json"], {}, tmp_path / "ledger.json", tmp_path / "ledger.md")
    return EvaluateInputs(
        scores=scores, answers=answers, judge=tmp_path / "judge.json", judge_rows=tmp_path / "judge.jsonl",
        parity=tmp_path / "parity.json", loss_png=tmp_path / "loss.png", summary=tmp_path / "summary.json",
        stats=tmp_path / "stats.json", ledger=tmp_path / "ledger.json",
    )


@pytest.mark.slow  # two GGUF and two MLX model loads
def test_answer_test_and_evaluate_end_to_end(
    tmp_path: Path, chat_dataset_dir: Path, bundled_gguf: Path, base_model_dir: Path
) -> None:
    out = tmp_path / "eval"
    answer_inputs = AnswerInputs(
        test=_test_split(tmp_path, chat_dataset_dir), base_gguf=bundled_gguf, tuned_gguf=bundled_gguf,
        base_model=base_model_dir, tuned_model=base_model_dir,
    )
    answer_outputs = AnswerOutputs(answers=out / "answers.jsonl", scores=out / "scores.json")
    section = section_config(
        "evaluate", {"max_new_tokens": 16, "n_side_by_side": 4, "loss_batch_size": 3, "n_ctx": 512}
    )
    returned = answer_test(answer_inputs, answer_outputs, section_part(AnswerSettings, section), threads=1)
    scores = json.loads(answer_outputs.scores.read_text(encoding="utf-8"))
    assert scores == returned
    assert (scores["n_examples"], scores["gguf_quant"], scores["max_new_tokens"]) == (4, "q8_0", 16)
    assert scores["n_test_videos"] is None  # the chat dataset's rows name no video
    values = scores["per_question"]
    for name in ("base", "tuned"):
        assert len(values[name]["rouge_l"]) == 4 and len(values[name]["chrf_statistics"]) == 4
        # Summed statistics give the corpus chrF, summed token-weighted losses the test loss.
        assert chrf_from_statistics(values[name]["chrf_statistics"]) == pytest.approx(
            scores["metrics"][name]["chrf"], abs=1e-9)
        losses, tokens = values[name]["loss"], values[name]["loss_tokens"]
        weighted = sum(lo * n for lo, n in zip(losses, tokens, strict=True))
        assert weighted / sum(tokens) == pytest.approx(
            scores["metrics"][name]["test_loss"], rel=1e-4)
        assert sum(values[name]["loss_tokens"]) == scores["loss_tokens"][name]

    inputs = _report_inputs(tmp_path, answer_outputs.scores, answer_outputs.answers)
    outputs = EvaluateOutputs(metrics=out / "metrics.json", report=out / "report.html")
    metrics = evaluate(inputs, outputs, section_part(ReportSettings, section), run=None)
    assert metrics == json.loads(outputs.metrics.read_text(encoding="utf-8"))
    assert (metrics["n_examples"], metrics["gguf_quant"], metrics["max_new_tokens"]) == (4, "q8_0", 16)
    for key in ("base", "tuned", "delta", "delta_ci95", "significant", "better"):
        assert set(metrics[key]) == set(METRIC_NAMES), key
    # Same GGUF and same model dir on both sides: greedy answers and losses are identical.
    assert all(metrics["delta"][name] == 0 for name in METRIC_NAMES)
    assert all(metrics["delta_ci95"][name] == [0.0, 0.0] for name in METRIC_NAMES)
    assert set(metrics["better"].values()) <= {NOT_SIGNIFICANT, "n/a"}
    assert metrics["base"]["test_perplexity"] == pytest.approx(math.exp(metrics["base"]["test_loss"]))
    assert metrics["reference"]["mean_answer_chars"] > 0
    for name in ("base", "tuned"):
        timing = metrics["timing"][name]
        assert timing["completion_tokens"] > 0
        assert timing["generation_tokens_per_s"] > 0
    assert metrics["timing"]["threads"] == 1
    assert (metrics["llm_cost"]["calls"], metrics["llm_cost"]["dollars"]) == (5, 0.0)  # a local teacher
    assert metrics["judge"]["status"] == "not_run" and metrics["parity"]["status"] == "ok"

    answers = [json.loads(line) for line in answer_outputs.answers.read_text(encoding="utf-8").splitlines()]
    assert len(answers) == 4
    assert answers[-1]["meta"] == {"id": "tricky"}
    for row in answers:
        for name in ("base", "tuned"):
            side = row[name]
            assert side["answer"] and side["finish_reason"] in {"stop", "length"}
            assert 0.0 <= side["rouge_l"] <= 1.0
            assert side["completion_tokens"] <= 16
            assert side["format_ok"] == (side["finish_reason"] == "stop" and not side["format_issues"])
            assert side["loss"] > 0 and side["loss_tokens"] > 0
        assert row["base"]["answer"] == row["tuned"]["answer"]
    compliance = sum(r["base"]["format_ok"] for r in answers) / len(answers)
    assert metrics["base"]["format_compliance"] == pytest.approx(compliance)
    assert metrics["base"]["rouge_l"] == pytest.approx(sum(r["base"]["rouge_l"] for r in answers) / 4)

    html = outputs.report.read_text(encoding="utf-8")
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 2 and base64.b64decode(images[1]) == inputs.loss_png.read_bytes()
    assert "<table class=\"metrics\">" in html
    for info in METRICS:
        assert info.label in html
    assert "The judge was not run:" in html
    assert "150" in html and "1.4321" in html  # best iteration and best val loss from summary.json
    assert "examples.total" in html and "per_video" in html  # dataset statistics
    assert "Building the dataset cost $0 for 5 LLM calls" in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>water</b>" not in html and "&lt;b&gt;water&lt;/b&gt;" in html
    assert answers[0]["base"]["answer"].split()[0] in html  # the side-by-side answers are in the report
    assert not re.search(r'(src|href)="(https?:)?//', html)  # self-contained


@pytest.mark.slow  # loads a model
def test_gguf_without_chat_template_is_refused(tmp_path: Path, bundled_gguf: Path) -> None:
    import gguf
    from gguf.scripts.gguf_new_metadata import copy_with_new_metadata, get_field_data

    from tubetune.evaluate.generate import load_gguf

    reader = gguf.GGUFReader(bundled_gguf)
    stripped = tmp_path / "no-template.gguf"
    writer = gguf.GGUFWriter(
        stripped, arch=get_field_data(reader, gguf.Keys.General.ARCHITECTURE), endianess=reader.endianess
    )
    copy_with_new_metadata(reader, writer, {}, [gguf.Keys.Tokenizer.CHAT_TEMPLATE])
    with pytest.raises(InputFileError, match=r"no tokenizer\.chat_template metadata"):
        load_gguf(stripped, dataclasses.replace(generation_settings(DEFAULTS, threads=1), n_ctx=256))
    with pytest.raises(InputFileError, match="GGUF file not found"):
        load_gguf(tmp_path / "missing.gguf", generation_settings(DEFAULTS, threads=1))


@pytest.mark.slow  # reads the shared end-to-end run, makes a Snakemake report, dry-runs, reruns evaluate
def test_answer_test_and_evaluate_rules_in_snakemake(tiny_all_copy: Path) -> None:
    """answer_test and evaluate in the shared tiny run: their outputs, logs and benchmarks, the judge
    not run (no cached judge reply for the tiny model's answers, no key) with its reason in the report,
    the Snakemake report of the metrics, and each rule's settings as its params: an interval setting
    reruns evaluate alone, an answering setting answer_test too."""
    from conftest import TINY_ALL_CONFIG
    from workflow import dry_run_jobs, dry_run_reasons, edit_config, snakemake

    workdir = tiny_all_copy
    results = workdir / "results"
    metrics = json.loads((results / "eval/metrics.json").read_text(encoding="utf-8"))
    tiny = TINY_ALL_CONFIG["evaluate"]
    assert metrics["n_examples"] == tiny["max_examples"]
    assert metrics["max_new_tokens"] == tiny["max_new_tokens"]
    assert metrics["n_test_videos"] >= 1
    assert set(metrics["delta_ci95"]) == set(METRIC_NAMES) == set(metrics["significant"])
    for path in ("eval/answers.jsonl", "eval/scores.json", "eval/report.html", "benchmarks/answer_test.tsv",
                 "benchmarks/evaluate.tsv"):
        assert (results / path).is_file(), path
    assert "BLAS for MLX" in (workdir / "logs/answer_test.log").read_text(encoding="utf-8")
    assert "judge not run:" in (workdir / "logs/evaluate.log").read_text(encoding="utf-8")
    assert metrics["judge"]["status"] == "not_run" and metrics["judge"]["reason"]
    html = (results / "eval/report.html").read_text(encoding="utf-8")
    assert "The judge was not run: " in html
    assert html.index("The judge was not run: ") < html.index("<h2>Metrics</h2>")
    assert metrics["parity"]["status"] in {"ok", "drop", "not_run"}

    target = "results/eval/metrics.json"
    report = snakemake(workdir, target, "--report", "sm.html")
    assert report.returncode == 0, report.output[-3000:]
    assert "Base vs tuned metrics on the test split" in (workdir / "sm.html").read_text(encoding="utf-8")

    edit_config(workdir, evaluate={"n_side_by_side": 1})
    dry = snakemake(workdir, "-n", target)
    assert dry.returncode == 0, dry.output[-3000:]
    assert dry_run_jobs(dry) == {"evaluate": 1}
    assert any("params" in reason.lower() for reason in dry_run_reasons(dry)["evaluate"])
    edit_config(workdir, evaluate={"bootstrap_resamples": 500})  # also the judge's intervals
    dry = snakemake(workdir, "-n", target)
    assert dry.returncode == 0, dry.output[-3000:]
    assert "answer_test" not in dry_run_jobs(dry) and dry_run_jobs(dry)["evaluate"] == 1
    rerun = snakemake(workdir, target)
    assert rerun.returncode == 0, rerun.output[-3000:]
    rerun_metrics = json.loads((results / "eval/metrics.json").read_text(encoding="utf-8"))
    assert rerun_metrics["bootstrap"]["resamples"] == 500

    edit_config(workdir, evaluate={"max_new_tokens": 16})
    dry = snakemake(workdir, "-n", target)
    assert dry.returncode == 0, dry.output[-3000:]
    assert any("params" in reason.lower() for reason in dry_run_reasons(dry).get("answer_test", set()))
    assert "evaluate" in dry_run_jobs(dry)
