from __future__ import annotations

from tubetune.dataset.dedup import find_duplicates

PARAPHRASES = [
    "What temperature should I preheat my dutch oven to?",
    "How long should the autolyse last?",
    "Why does my loaf spread flat in the oven?",
    "To what temperature should the dutch oven be preheated?",
    "How long should I autolyse the dough for?",
    "What is the poke test?",
    "what is the POKE test",
    "How much water does whole wheat flour absorb compared to white flour?",
]


def test_paraphrased_near_duplicates_are_removed() -> None:
    dups = {(d.index, d.kept, d.kind) for d in find_duplicates(PARAPHRASES, threshold=0.75)}
    assert dups == {(3, 0, "near"), (4, 1, "near"), (6, 5, "exact")}


def test_distinct_questions_on_one_topic_are_kept() -> None:
    questions = [
        "What is hydration?",
        "What hydration should a beginner choose?",
        "How does whole wheat flour change the hydration?",
        "Does the starter count toward the hydration?",
    ]
    assert find_duplicates(questions, threshold=0.75) == []


def test_threshold_controls_what_counts_as_near() -> None:
    pair = ["How long should the autolyse last?", "How long should I autolyse the dough for?"]
    assert find_duplicates(pair, threshold=0.75)
    assert not find_duplicates(pair, threshold=0.95)
