"""Fixture inputs of the evaluate rule (no model): scores.json, answers.jsonl, judge.json / judge.jsonl,
parity.json, a loss plot, a training summary, dataset statistics and an LLM ledger.

26 test questions from 2 videos, as on the sample. By construction: the tuned model always ends
cleanly and the base never does (format compliance 0 -> 1, significant), both refuse equally often
(delta 0, not significant), and the tuned ROUGE-L differs from the base by noise around 0 (not
significant).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

from tubetune.evaluate.metrics import (
    aggregate_answers,
    chrf_statistics,
    reference_lengths,
    score_answer,
    word_count,
)
from tubetune.evaluate.summary import EvaluateInputs, EvaluateOutputs
from tubetune.jsonio import write_json, write_jsonl
from tubetune.llm.ledger import llm_ledger

N_QUESTIONS = 26
TOPICS = ["starter", "levain", "crumb", "crust", "oven", "flour", "salt", "water", "proof", "shape",
          "score", "steam", "rye"]


def _texts(rng: random.Random) -> tuple[list[str], list[str], list[str], list[str]]:
    questions, references, base, tuned = [], [], [], []
    for i in range(N_QUESTIONS):
        topic = TOPICS[i % len(TOPICS)]
        questions.append(f"Question {i}: what matters most about the {topic}?")
        references.append(f"Watch the {topic}: keep it warm, feed it on time and give it {i % 5 + 2} hours.")
        base.append(f"The {topic} is a very important part of baking bread and there are many things "
                    f"to say about it, for example temperature, time and" + " more" * rng.randint(3, 9))
        tuned.append(f"Keep the {topic} warm and give it {rng.randint(2, 6)} hours.")
    return questions, references, base, tuned


def write_loss_png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 10, 20], [2.1, 1.7, 1.5], label="val")
    fig.savefig(path, format="png")
    plt.close(fig)


def _model_side(texts: list[str], references: list[str], *, clean: bool, rng: random.Random,
                loss: float) -> tuple[list[Any], dict[str, Any], list[dict[str, Any]]]:
    """Scores, per-question values and answers.jsonl sides of one model."""
    scores = [
        score_answer(text, ref, finish_reason="stop" if clean else "length",
                     completion_tokens=30 if clean else 64, max_tokens=64, refusal_patterns=(),
                     markers=("<|im_end|>",))
        for text, ref in zip(texts, references, strict=True)
    ]
    scores = [s if i % 13 else dataclasses.replace(s, refusal=True) for i, s in enumerate(scores)]
    losses = [loss + rng.uniform(-0.3, 0.3) for _ in texts]
    tokens = [len(ref.split()) + 3 for ref in references]
    values = {
        "rouge_l": [s.rouge_l for s in scores],
        "chrf_statistics": chrf_statistics(texts, references),
        "loss": losses,
        "loss_tokens": tokens,
        "format_ok": [s.format.ok for s in scores],
        "cut_at_max": [s.format.cut_at_max for s in scores],
        "leak": [bool(s.format.leaked) for s in scores],
        "refusal": [s.refusal for s in scores],
        "chars": [s.chars for s in scores],
        "words": [s.words for s in scores],
    }
    sides = [{"answer": text, "finish_reason": "stop" if clean else "length", **s.to_json(), "loss": lo,
              "loss_tokens": n} for text, s, lo, n in zip(texts, scores, losses, tokens, strict=True)]
    return scores, values, sides


def scores_and_answers(seed: int = 3) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A scores.json document and the matching answers.jsonl rows."""
    rng = random.Random(seed)
    questions, references, base, tuned = _texts(rng)
    base_scores, base_values, base_sides = _model_side(base, references, clean=False, rng=rng, loss=3.4)
    tuned_scores, tuned_values, tuned_sides = _model_side(tuned, references, clean=True, rng=rng, loss=2.9)
    per_model = {}
    for name, texts, scores, values in (("base", base, base_scores, base_values),
                                        ("tuned", tuned, tuned_scores, tuned_values)):
        weighted = sum(lo * n for lo, n in zip(values["loss"], values["loss_tokens"], strict=True))
        loss = weighted / sum(values["loss_tokens"])
        per_model[name] = {"test_loss": loss, "test_perplexity": math.exp(loss),
                           **aggregate_answers(texts, references, scores)}
    scores_doc = {
        "n_examples": N_QUESTIONS, "n_test_videos": 2, "gguf_quant": "q8_0", "max_new_tokens": 64,
        "metrics": per_model, "reference": reference_lengths(references),
        "per_question": {"reference_chars": [len(r) for r in references],
                         "reference_words": [word_count(r) for r in references],
                         "base": base_values, "tuned": tuned_values},
        "loss_tokens": {"base": sum(base_values["loss_tokens"]), "tuned": sum(tuned_values["loss_tokens"])},
        "timing": {"base": {"generation_tokens_per_s": 30.0}, "tuned": {"generation_tokens_per_s": 31.0},
                   "threads": 2, "total_seconds": 95.0},
        "models": {"base_gguf": "b.gguf", "tuned_gguf": "t.gguf", "base_model": "b", "tuned_model": "t"},
        "blas": "OpenBLAS", "settings": {"quant": "q8_0", "max_new_tokens": 64},
    }
    answers = [
        {"index": i, "question": questions[i], "reference": references[i],
         "meta": {"video_id": "Nm7Qa3Ws8Ed" if i < 13 else "Qp2Lx9Vt4Rb"},
         "base": base_sides[i], "tuned": tuned_sides[i]}
        for i in range(N_QUESTIONS)
    ]
    return scores_doc, answers


NOT_RUN_REASON = ("26 of 52 judge requests have no cached reply and ANTHROPIC_API_KEY is not set; "
                  "another machine's answers can differ from the seed cache's")


def judge_not_run() -> dict[str, Any]:
    return {"status": "not_run", "reason": NOT_RUN_REASON}


def judge_rows() -> list[dict[str, Any]]:
    """judge.jsonl: tuned wins 0-8 (question 3 by the widest margin), base wins 9-11 (10 widest),
    flips 12-15, plain ties after."""
    rows = []
    for i in range(N_QUESTIONS):
        outcome = "tuned" if i < 9 else "base" if i < 12 else "tie"
        flipped = 12 <= i < 16
        first, second = ("tuned", "base") if flipped else (outcome, outcome)
        if outcome == "base":
            faith = {"base": "yes", "tuned": "partly"}
            style = {"base": 4.0 if i == 10 else 3.0, "tuned": 2.0}
        else:
            faith = {"base": "partly", "tuned": "yes"}
            style = {"base": 2.0, "tuned": 4.5 if i == 3 else 3.0}
        rows.append({
            "index": i, "question": f"Question {i}", "outcome": outcome, "flipped": flipped,
            "orders": [
                {"order": "base_first", "preferred": first, "reason": f"reason {i} base first",
                 "request_key": f"k{i}a"},
                {"order": "tuned_first", "preferred": second, "reason": f"reason {i} tuned first",
                 "request_key": f"k{i}b"},
            ],
            "faithfulness": faith, "style": style, "error": None,
        })
    return rows


def judge_ok() -> dict[str, Any]:
    return {
        "status": "ok", "reason": None, "backend": "anthropic", "model": "claude-sonnet-4-6",
        "prompt_hash": "abc", "n": 26, "errors": 0, "tuned_wins": 9, "base_wins": 3, "ties": 14,
        "tuned_win_rate": 0.615, "ci95": [0.46, 0.77], "flips": 4,
        "faithfulness": {"base": {"yes": 3, "partly": 23, "no": 0, "yes_rate": 0.115, "score": 0.558},
                         "tuned": {"yes": 23, "partly": 3, "no": 0, "yes_rate": 0.885, "score": 0.942}},
        "style": {"base": {"mean": 2.2}, "tuned": {"mean": 2.9}, "delta": 0.7, "delta_ci95": [0.4, 1.0]},
        "faithful_delta": 0.385, "faithful_delta_ci95": [0.58, 0.92],
        "usage": {"pass": "judge", "backend": "anthropic", "model": "claude-sonnet-4-6", "requests": 52,
                  "cache_hits": 0, "calls": 52, "input_tokens": 52000, "output_tokens": 5200},
        "dollars": 0.234,
    }


def parity(drop: bool = False) -> dict[str, Any]:
    gguf = {"status": "drop" if drop else "ok", "reason": None, "tokens_equal": 20 if drop else 81,
            "tokens_compared": 96, "share": 0.21 if drop else 0.84,
            "per_prompt": [{"index": 0, "equal_prefix": 5, "compared": 24, "reference_text": "Feed it daily",
                            "other_text": "Feed the <b>dog</b>"}]}
    hf: dict[str, Any] = {"status": "skipped", "reason": "transformers is not installed",
                          "tokens_equal": None, "tokens_compared": None, "share": None, "per_prompt": []}
    return {"status": "drop" if drop else "ok", "reason": None, "n_prompts": 4, "max_tokens": 24,
            "min_share": 0.5, "comparisons": {"gguf_f16": gguf, "hf_transformers": hf}}


def write_inputs(folder: Path, *, judge: str = "not_run", parity_drop: bool = False,
                 parity_status: str | None = None) -> tuple[EvaluateInputs, EvaluateOutputs]:
    """Every input of the evaluate rule in ``folder``; ``judge``: "not_run" or "ok"."""
    folder.mkdir(parents=True, exist_ok=True)
    scores, answers = scores_and_answers()
    write_json(folder / "scores.json", scores)
    write_jsonl(folder / "answers.jsonl", answers)
    write_json(folder / "judge.json", judge_ok() if judge == "ok" else judge_not_run())
    write_jsonl(folder / "judge.jsonl", judge_rows() if judge == "ok" else [])
    parity_doc = parity(parity_drop)
    if parity_status == "not_run":
        parity_doc = {"status": "not_run", "reason": "no f16 GGUF export", "comparisons": {}}
    write_json(folder / "parity.json", parity_doc)
    write_loss_png(folder / "loss.png")
    (folder / "summary.json").write_text(json.dumps({"best_iteration": 30, "best_val_loss": 2.47}))
    (folder / "stats.json").write_text(json.dumps({"examples": {"train": 90, "valid": 12, "test": 26}}))
    usage = {"pass": "questions", "backend": "anthropic", "model": "claude-sonnet-4-6", "requests": 9,
             "cache_hits": 9, "calls": 0}
    write_json(folder / "usage.json", usage)
    llm_ledger([folder / "usage.json"], {}, folder / "ledger.json", folder / "ledger.md")
    inputs = EvaluateInputs(
        scores=folder / "scores.json", answers=folder / "answers.jsonl", judge=folder / "judge.json",
        judge_rows=folder / "judge.jsonl", parity=folder / "parity.json", loss_png=folder / "loss.png",
        summary=folder / "summary.json", stats=folder / "stats.json", ledger=folder / "ledger.json",
    )
    outputs = EvaluateOutputs(metrics=folder / "out" / "metrics.json", report=folder / "out" / "report.html")
    return inputs, outputs
