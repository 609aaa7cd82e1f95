"""Learning-rate / rank / layer sweeps: run naming and expansion, validation, ranking, the PNG, and the
real workflow (dry-runs on a copy; a slow run of the tiny-test profile that adds a point, started from
a copy of the test session's finished tiny ``all`` run so that the dataset and base model are reused)."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml

from tubetune.config import validate_config
from tubetune.errors import ConfigError, InputFileError
from tubetune.train.compare import (
    NO_LOSS_REASON,
    CompareOutputs,
    RunResult,
    compare_runs,
    rank_runs,
    ranking_markdown,
    winner_of,
)
from tubetune.train.sweep import format_learning_rate, run_name, sweep_points, sweep_runs
from workflow import REPO, copy_run, copy_workflow, dry_run_jobs, dry_run_reasons, edit_config, snakemake

LLM_RULES = ("transcripts", "questions", "answers")


def repo_config(**sweep: Any) -> dict[str, Any]:
    """The repository's config.yaml with ``sweep`` set, validated (profile applied, defaults filled)."""
    config: dict[str, Any] = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    config["sweep"] = sweep
    validate_config(config, REPO / "config.schema.yaml")
    return config


def test_yaml_1_1_exponents_read_as_numbers() -> None:
    """PyYAML reads ``1e-4`` as text; where the schema wants a number it becomes one."""
    text = (REPO / "config.yaml").read_text(encoding="utf-8")
    config: dict[str, Any] = yaml.safe_load(
        text.replace("learning_rate: []", "learning_rate: [5e-6, 1e-4]", 1)
    )
    config["train"]["learning_rate"] = "2E-4"
    assert config["sweep"]["learning_rate"] == ["5e-6", "1e-4"]  # what PyYAML gives
    validate_config(config, REPO / "config.schema.yaml")
    assert config["sweep"]["learning_rate"] == [5e-6, 1e-4] and config["train"]["learning_rate"] == 2e-4
    assert list(sweep_runs(config)) == ["lr5e-06", "lr1e-04"]
    config["source"]["channel"] = "1e5"  # text where text is allowed stays text
    validate_config(config, REPO / "config.schema.yaml")
    assert config["source"]["channel"] == "1e5"


# ------------------------------------------------------------------------------------ naming, expansion


def test_learning_rate_names_are_short_and_lossless() -> None:
    assert format_learning_rate(5e-5) == "5e-05"
    assert format_learning_rate(1e-4) == "1e-04"
    assert format_learning_rate(2.5e-5) == "2.5e-05"
    assert format_learning_rate(1.25e-3) == "1.25e-03"
    # Rates that round alike still get different names.
    assert format_learning_rate(2.5e-5) != format_learning_rate(2e-5)
    for value in (5e-6, 1e-5, 3.3e-4, 7.77e-6):
        assert float(format_learning_rate(value)) == value


def test_run_names_use_the_swept_keys_only() -> None:
    assert run_name({}) == "default"
    assert run_name({"learning_rate": 5e-5}) == "lr5e-05"
    assert run_name({"num_layers": 8, "rank": 16, "learning_rate": 1e-4}) == "lr1e-04_r16_l8"
    assert run_name({"rank": 4, "num_layers": -1}) == "r4_lall"


def test_no_sweep_is_one_default_run_with_the_resolved_train_settings() -> None:
    config = repo_config()
    runs = sweep_runs(config)
    assert list(runs) == ["default"]
    assert runs["default"] == config["train"]
    assert runs["default"]["batch_size"] == 4 and runs["default"]["epochs"] == 1.5  # from the profile


def test_sweep_is_the_cartesian_product_over_the_resolved_train_section() -> None:
    rates = [5.0e-6, 1.0e-5, 5.0e-5, 1.0e-4]
    config = repo_config(learning_rate=rates, rank=[8, 16])
    runs = sweep_runs(config)
    assert list(runs) == [f"lr{format_learning_rate(lr)}_r{r}" for lr in rates for r in (8, 16)]
    for (lr, rank), settings in zip(itertools.product(rates, [8, 16]), runs.values(), strict=True):
        assert settings["learning_rate"] == lr and settings["rank"] == rank
        others = {k: v for k, v in settings.items() if k not in ("learning_rate", "rank")}
        assert others == {k: v for k, v in config["train"].items() if k not in ("learning_rate", "rank")}
    assert runs["lr1e-04_r16"]["profile"] == "cpu-smollm2" and runs["lr1e-04_r16"]["alpha"] == 16


def test_adding_a_point_keeps_the_other_runs_unchanged() -> None:
    before = sweep_runs(repo_config(learning_rate=[1.0e-4, 5.0e-5]))
    after = sweep_runs(repo_config(learning_rate=[1.0e-4, 5.0e-5, 2.0e-4]))
    assert set(after) == set(before) | {"lr2e-04"}
    for name, settings in before.items():
        assert after[name] == settings


def test_empty_lists_are_not_swept() -> None:
    assert sweep_points({"learning_rate": [], "rank": [4], "num_layers": []}) == [{"rank": 4}]
    assert sweep_points({}) == [{}]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"learning_rate": [1.0e-4, 1.0e-4]}, "sweep.learning_rate: [0.0001, 0.0001] has non-unique"),
        ({"learning_rate": [0]}, "sweep.learning_rate.0: 0 is less than or equal to the minimum of 0"),
        ({"learning_rate": ["fast"]}, "sweep.learning_rate.0: 'fast' is not of type 'number'"),
        ({"rank": [0]}, "sweep.rank.0: 0 is less than the minimum of 1"),
        ({"rank": [8.5]}, "sweep.rank.0: 8.5 is not of type 'integer'"),
        ({"num_layers": [-2]}, "sweep.num_layers.0: -2 is less than the minimum of -1"),
        ({"learning_rates": [1.0e-4]}, "unknown key 'sweep.learning_rates' (did you mean 'learning_rate'?)"),
        ({"select_by": "test_loss"}, "sweep.select_by: 'test_loss' is not one of ['val_loss']"),
    ],
)
def test_bad_sweep_values_fail_schema_validation(sweep: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        repo_config(**sweep)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_point_that_breaks_the_train_settings_names_the_sweep_key() -> None:
    config = repo_config(learning_rate=[1.0e-4], num_layers=[4, 0])
    with pytest.raises(ConfigError) as error:
        sweep_runs(config)
    message = str(error.value)
    assert message == (
        "config error: sweep run 'lr1e-04_l0' (sweep.num_layers = 0): "
        "train.num_layers must be -1 (all layers) or at least 1"
    )


def test_train_section_errors_read_as_without_a_sweep() -> None:
    config = repo_config(learning_rate=[1.0e-4])
    config["train"]["iters"] = 10  # and epochs from the profile
    with pytest.raises(ConfigError, match=r"set exactly one of train\.iters and train\.epochs"):
        sweep_runs(config)


# --------------------------------------------------------------------------------------------- ranking


def result(run: str, loss: float | None, iteration: int | None = 10, **extra: Any) -> RunResult:
    lr = float(run.removeprefix("lr")) if run.startswith("lr") else 1e-4
    summary = {
        "settings": {"learning_rate": lr, "rank": 8, "num_layers": -1},
        "best_val_loss": loss,
        "best_iteration": iteration,
        "early_stopped": extra.pop("early_stopped", False),
        "diverged": extra.pop("diverged", None),
        "tokens_per_second_mean": 120.5,
    }
    metrics = extra.pop("metrics", [
        {"kind": "val", "iteration": 0, "val_loss": 3.0},
        {"kind": "train", "iteration": 5, "train_loss": 2.8},
        {"kind": "val", "iteration": 10, "val_loss": loss if loss is not None else math.nan},
    ])
    return RunResult.from_summary(run, summary, metrics, extra.pop("test_loss", None))


def test_ranking_is_by_best_val_loss_never_by_test_loss() -> None:
    runs = [
        result("lr1e-04", 2.5, test_loss={"loss": 1.0, "perplexity": 2.7}),
        result("lr5e-05", 2.4, test_loss={"loss": 9.0, "perplexity": 8103.0}),
        result("lr1e-05", 2.9, test_loss={"loss": 0.5, "perplexity": 1.6}),
    ]
    ranked = rank_runs(runs)
    assert [r.result.run for r in ranked] == ["lr5e-05", "lr1e-04", "lr1e-05"]
    assert [r.rank for r in ranked] == [1, 2, 3]
    assert winner_of(ranked).result.run == "lr5e-05"


def test_nan_and_missing_losses_rank_last_with_a_reason() -> None:
    runs = [
        result("lr1e-03", math.nan),
        result("lr5e-05", 2.4),
        result("lr1e-02", None, iteration=None),
        result("lr1e-04", float("inf")),
    ]
    ranked = rank_runs(runs)
    assert [r.result.run for r in ranked] == ["lr5e-05", "lr1e-02", "lr1e-03", "lr1e-04"]
    assert ranked[0].reason is None
    assert all(r.reason == NO_LOSS_REASON for r in ranked[1:])
    markdown = ranking_markdown(ranked)
    assert f"- `lr1e-03`: {NO_LOSS_REASON}" in markdown
    with pytest.raises(InputFileError, match="no run has a finite validation loss"):
        winner_of(rank_runs([result("lr1e-03", math.nan), result("lr1e-02", None)]))


def test_ties_are_broken_deterministically() -> None:
    runs = [
        result("lr3e-05", 2.5, iteration=20),
        result("lr2e-05", 2.5, iteration=10),
        result("lr1e-05", 2.5, iteration=20),
        result("lr9e-05", 2.6, iteration=0),
    ]
    expected = ["lr2e-05", "lr1e-05", "lr3e-05", "lr9e-05"]  # earlier best iteration, then name
    for order in itertools.permutations(runs):
        assert [r.result.run for r in rank_runs(order)] == expected


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_compare_writes_table_winner_and_one_png(tmp_path: Path) -> None:
    outputs = CompareOutputs(
        ranking_md=tmp_path / "sweep" / "ranking.md",
        ranking_json=tmp_path / "sweep" / "ranking.json",
        plot=tmp_path / "sweep" / "loss_curves.png",
        winner=tmp_path / "sweep" / "winner.json",
    )
    runs = [
        result("lr1e-04", 2.5, test_loss={"loss": 2.6, "perplexity": 13.46}),
        result("lr5e-05", 2.4, iteration=8, early_stopped=True, test_loss={"loss": 2.55, "perplexity": 12.8}),
        result("lr1e-03", math.nan),
        # diverged at iteration 6, after a best of 2.45 at iteration 4: ranked by that best, flagged
        result("lr5e-04", 2.45, iteration=4, diverged={"iteration": 6, "message": "train loss is NaN"}),
    ]
    winner = compare_runs(runs, outputs)
    assert winner["run"] == "lr5e-05" and winner["best_val_loss"] == 2.4 and winner["best_iteration"] == 8
    assert winner["settings"]["learning_rate"] == 5e-5
    assert json.loads(outputs.winner.read_text()) == winner
    ranking = json.loads(outputs.ranking_json.read_text())
    assert ranking["winner"] == "lr5e-05" and ranking["select_by"] == "val_loss"
    assert [row["run"] for row in ranking["runs"]] == ["lr5e-05", "lr5e-04", "lr1e-04", "lr1e-03"]
    assert ranking["runs"][1]["diverged_at"] == 6 and ranking["runs"][0]["diverged_at"] is None
    assert ranking["runs"][0]["test_loss"] == 2.55 and ranking["runs"][0]["early_stopped"] is True
    assert ranking["runs"][3]["best_val_loss"] is None and ranking["runs"][3]["reason"] == NO_LOSS_REASON
    table = outputs.ranking_md.read_text()
    header = next(line for line in table.splitlines() if line.startswith("| rank"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "rank", "run", "learning_rate", "rank (LoRA)", "num_layers", "best val loss", "best iteration",
        "test loss", "test perplexity", "tokens/s", "stopped",
    ]
    first = "| 1 | **lr5e-05** (winner) | 5e-05 | 8 | -1 | 2.4000 | 8 | 2.5500 | 12.800 | 120 | early |"
    assert first in table
    assert "| 2 | lr5e-04 | 0.0005 | 8 | -1 | 2.4500 | 4 | - | - | 120 | diverged at 6 |" in table
    assert png_size(outputs.plot) == (880, 528)
    # The figure draws every run: one more run gives a different picture.
    single = CompareOutputs(*(tmp_path / "one" / p.name for p in (
        outputs.ranking_md, outputs.ranking_json, outputs.plot, outputs.winner)))
    compare_runs(runs[:3], single)
    assert single.plot.read_bytes() != outputs.plot.read_bytes()


# ------------------------------------------------------------------------------ real Snakemake, dry-run


def test_dry_run_of_a_two_point_sweep_has_two_training_runs_and_one_compare(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    edit_config(workdir, sweep={"learning_rate": [1.0e-4, 5.0e-5]})
    run = snakemake(workdir, "-n", "train")
    assert run.returncode == 0, run.output[-3000:]
    jobs = dry_run_jobs(run)
    assert jobs["train_run"] == 2 and jobs["test_loss"] == 2 and jobs["compare"] == 1
    for name in ("lr1e-04", "lr5e-05"):
        assert f"results/train/{name}/adapters/adapters.safetensors" in run.output
        assert f"logs/train/{name}.log" in run.output
    assert "results/train/default" not in run.output

    edit_config(workdir, sweep={"learning_rate": []})
    run = snakemake(workdir, "-n", "train")
    assert run.returncode == 0, run.output[-3000:]
    assert dry_run_jobs(run)["train_run"] == 1
    assert "results/train/default/adapters/adapters.safetensors" in run.output


def test_a_bad_sweep_point_stops_the_workflow_before_any_job(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    edit_config(workdir, sweep={"num_layers": [4, 0]})
    run = snakemake(workdir, "-n", "train")
    assert run.returncode != 0
    assert "config error: sweep run 'l0' (sweep.num_layers = 0)" in run.output


# ----------------------------------------------------------------- real Snakemake, tiny training (slow)


@pytest.fixture(scope="module")
def sweep_run(tiny_all_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``all`` with a two-point learning-rate sweep on the tiny-test profile (validated at 0 and 6 only),
    run in a copy of the finished tiny run: its dataset and base model are reused, its single run
    ``default`` is removed (no longer a target)."""
    workdir = copy_run(tiny_all_run, tmp_path_factory.mktemp("sweep") / "wf")
    shutil.rmtree(workdir / "results" / "train" / "default")
    edit_config(
        workdir,
        train={"profile": "tiny-test", "steps_per_eval": 6},
        sweep={"learning_rate": [1.0e-3, 2.0e-4]},
        export={"gguf_types": ["q8_0"]},
        evaluate={"max_examples": 4, "max_new_tokens": 24, "n_side_by_side": 2},
    )
    run = snakemake(workdir, "all")
    assert run.returncode == 0, run.output[-6000:]
    return workdir


def summaries(workdir: Path) -> dict[str, dict[str, Any]]:
    return {
        path.parent.name: json.loads(path.read_text())
        for path in sorted((workdir / "results" / "train").glob("*/summary.json"))
    }


@pytest.mark.slow
def test_sweep_ranks_the_runs_and_all_uses_the_winner(sweep_run: Path) -> None:
    results = sweep_run / "results"
    runs = summaries(sweep_run)
    assert set(runs) == {"lr1e-03", "lr2e-04"}
    for name, summary in runs.items():
        assert summary["settings"]["learning_rate"] == float(name.removeprefix("lr"))
        assert summary["settings"]["rank"] == 4  # tiny-test profile
        for path in ("adapters/adapters.safetensors", "metrics.jsonl", "loss.png", "test_loss.json"):
            assert (results / "train" / name / path).is_file(), (name, path)
        test_loss = json.loads((results / "train" / name / "test_loss.json").read_text())
        assert test_loss["run"] == name and math.isfinite(test_loss["loss"])
        assert test_loss["n_examples"] == 4  # evaluate.max_examples, as in the evaluation
        assert (results / "benchmarks" / "train" / f"{name}.tsv").is_file()
    expected = min(runs, key=lambda name: (runs[name]["best_val_loss"], runs[name]["best_iteration"], name))
    winner = json.loads((results / "sweep" / "winner.json").read_text())
    assert winner["run"] == expected
    assert winner["best_val_loss"] == runs[expected]["best_val_loss"]
    assert winner["settings"] == runs[expected]["settings"]
    ranking = json.loads((results / "sweep" / "ranking.json").read_text())
    assert [row["run"] for row in ranking["runs"]] == sorted(runs, key=lambda name: name != expected)
    assert f"**{expected}** (winner)" in (results / "sweep" / "ranking.md").read_text()
    assert png_size(results / "sweep" / "loss_curves.png")[0] > 0
    # all fused, exported and evaluated the winner, and says so.
    assert f"fusing the winner of the sweep: run {expected}" in (sweep_run / "logs" / "fuse.log").read_text()
    assert f"Training run: `{expected}`" in (results / "export" / "hf" / "README.md").read_text()
    assert json.loads((results / "eval" / "metrics.json").read_text())["train_run"] == expected
    assert f"<code>{expected}</code>" in (results / "eval" / "report.html").read_text()


@pytest.mark.slow
def test_adding_a_point_runs_only_that_point(sweep_run: Path) -> None:
    before = summaries(sweep_run)
    winner = json.loads((sweep_run / "results" / "sweep" / "winner.json").read_text())["run"]
    # Training helped the winner, so a learning rate too small to move the loss cannot win.
    assert before[winner]["best_val_loss"] < before[winner]["initial_val_loss"]
    edit_config(sweep_run, sweep={"learning_rate": [1.0e-3, 2.0e-4, 1.0e-7]})

    run = snakemake(sweep_run, "-n", "train")
    assert run.returncode == 0, run.output[-3000:]
    jobs = dry_run_jobs(run)
    manifests = jobs.pop("manifest", 0)  # rules/manifest.smk, when included: its own rerun rules
    assert jobs == {"train_run": 1, "test_loss": 1, "compare": 1, "train": 1}
    assert manifests <= len(before) + 1
    assert "results/train/lr1e-07/adapters/adapters.safetensors" in run.output
    for name in before:
        assert f"logs/train/{name}.log" not in run.output
    for rule in LLM_RULES:
        assert f"rule {rule}:" not in run.output
    reasons = dry_run_reasons(run)
    assert reasons["train_run"] and all("results/train/lr1e-07/" in reason for reason in reasons["train_run"])

    # For real: the new point trains, the comparison reruns, the winner stays, nothing after it runs.
    fuse_log = (sweep_run / "logs" / "fuse.log").read_text()
    run = snakemake(sweep_run, "all")
    assert run.returncode == 0, run.output[-6000:]
    after_fuse = ("fuse", "export_hf", "export_gguf", "answer_test", "judge", "parity", "evaluate")
    for rule in (*after_fuse, *LLM_RULES):
        assert f"rule {rule}:" not in run.output, rule
    assert run.output.count("rule train_run:") == 1
    after = summaries(sweep_run)
    assert set(after) == set(before) | {"lr1e-07"}
    for name, summary in before.items():
        assert after[name] == summary  # not retrained
    assert json.loads((sweep_run / "results" / "sweep" / "winner.json").read_text())["run"] == winner
    assert len(json.loads((sweep_run / "results" / "sweep" / "ranking.json").read_text())["runs"]) == 3
    assert (sweep_run / "logs" / "fuse.log").read_text() == fuse_log
    assert "Nothing to be done" in snakemake(sweep_run, "-n", "all").output


def test_repo_config_has_no_sweep_by_default() -> None:
    config = repo_config()
    assert config["sweep"] == {"learning_rate": [], "rank": [], "num_layers": [], "select_by": "val_loss"}
