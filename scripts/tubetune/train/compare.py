"""Compare the runs of a sweep: rank by best validation loss, one loss-curve PNG, the winner.

Only the validation loss picks the winner (``sweep.select_by: val_loss``). The test loss and
perplexity of each run are shown next to it, never used to choose: picking by test numbers would
make the evaluation on the test split optimistic.

Order: runs with a finite best validation loss first, lowest first; ties go to the run that reached
it at the earlier iteration, then to the run name (alphabetical), so the order never depends on the
order of the inputs. Runs without a finite best validation loss (diverged, or never validated) come
last with the reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tubetune.errors import InputFileError
from tubetune.jsonio import atomic_write_text, read_json, read_jsonl, write_json
from tubetune.train.sweep import SWEPT_KEYS

logger = logging.getLogger(__name__)

SELECT_BY = "val_loss"
NO_LOSS_REASON = "no finite validation loss (diverged or never validated)"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class RunResult:
    """What the comparison needs of one run (from its summary.json, metrics.jsonl, test_loss.json)."""

    run: str
    settings: Mapping[str, Any]
    best_val_loss: float | None
    best_iteration: int | None
    early_stopped: bool
    tokens_per_second: float | None
    diverged_at: int | None = None  # the iteration whose loss became NaN / infinite
    test_loss: float | None = None
    test_perplexity: float | None = None
    metrics: Sequence[Mapping[str, Any]] = field(default_factory=list)

    @classmethod
    def from_summary(
        cls,
        run: str,
        summary: Mapping[str, Any],
        metrics: Sequence[Mapping[str, Any]] = (),
        test_loss: Mapping[str, Any] | None = None,
    ) -> RunResult:
        best_iteration = summary.get("best_iteration")
        diverged = summary.get("diverged") or {}
        return cls(
            run=run,
            settings=dict(summary.get("settings") or {}),
            best_val_loss=_finite(summary.get("best_val_loss")),
            best_iteration=int(best_iteration) if isinstance(best_iteration, int) else None,
            early_stopped=bool(summary.get("early_stopped")),
            tokens_per_second=_finite(summary.get("tokens_per_second_mean")),
            diverged_at=diverged.get("iteration") if isinstance(diverged.get("iteration"), int) else None,
            test_loss=_finite((test_loss or {}).get("loss")),
            test_perplexity=_finite((test_loss or {}).get("perplexity")),
            metrics=list(metrics),
        )

    @classmethod
    def from_files(
        cls, run: str, summary: str | Path, metrics: str | Path, test_loss: str | Path | None = None
    ) -> RunResult:
        return cls.from_summary(
            run, read_json(summary), read_jsonl(metrics), read_json(test_loss) if test_loss else None
        )


@dataclass(frozen=True)
class RankedRun:
    rank: int
    result: RunResult
    reason: str | None  # why the run is not ranked by its loss (None: it is)

    def row(self) -> dict[str, Any]:
        """The run's entry in ranking.json."""
        r = self.result
        return {
            "rank": self.rank,
            "run": r.run,
            **{key: r.settings.get(key) for key in SWEPT_KEYS},
            "best_val_loss": r.best_val_loss,
            "best_iteration": r.best_iteration,
            "test_loss": r.test_loss,
            "test_perplexity": r.test_perplexity,
            "tokens_per_second": r.tokens_per_second,
            "early_stopped": r.early_stopped,
            "diverged_at": r.diverged_at,
            "reason": self.reason,
        }


def rank_runs(results: Sequence[RunResult]) -> list[RankedRun]:
    """Runs best first (see the module docstring for the order and the ties)."""
    if not results:
        raise InputFileError("compare: no training runs to compare")

    def key(result: RunResult) -> tuple[int, float, int, str]:
        if result.best_val_loss is None:
            return (1, math.inf, 0, result.run)
        iteration = result.best_iteration if result.best_iteration is not None else 0
        return (0, result.best_val_loss, iteration, result.run)

    ranked = []
    for position, result in enumerate(sorted(results, key=key), start=1):
        reason = None if result.best_val_loss is not None else NO_LOSS_REASON
        ranked.append(RankedRun(position, result, reason))
    return ranked


def winner_of(ranked: Sequence[RankedRun]) -> RankedRun:
    """The first run; an error when no run has a finite validation loss."""
    if not ranked or ranked[0].reason is not None:
        raise InputFileError(
            "compare: no run has a finite validation loss (all diverged?): lower sweep.learning_rate / "
            "train.learning_rate and check results/train/*/metrics.jsonl"
        )
    return ranked[0]


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}"
    return str(value)


RANKING_COLUMNS = (
    "rank", "run", "learning_rate", "rank (LoRA)", "num_layers", "best val loss", "best iteration",
    "test loss", "test perplexity", "tokens/s", "stopped",
)


def _stopped(result: RunResult) -> str:
    if result.diverged_at is not None:
        return f"diverged at {result.diverged_at}"
    return "early" if result.early_stopped else "-"


def ranking_markdown(ranked: Sequence[RankedRun]) -> str:
    """The ranking as a Markdown table; the winner in bold, unranked runs with their reason."""
    lines = [
        "# Sweep ranking",
        "",
        f"Runs ranked by best validation loss (`sweep.select_by: {SELECT_BY}`); ties go to the earlier best "
        "iteration, then the run name. The test loss and perplexity are shown, never used to pick the "
        "winner.",
        "",
        "| " + " | ".join(RANKING_COLUMNS) + " |",
        "|" + "|".join("---" for _ in RANKING_COLUMNS) + "|",
    ]
    for index, entry in enumerate(ranked):
        r = entry.result
        name = f"**{r.run}** (winner)" if index == 0 and entry.reason is None else r.run
        cells = [
            str(entry.rank), name, _cell(r.settings.get("learning_rate"), 3), _cell(r.settings.get("rank")),
            _cell(r.settings.get("num_layers")), _cell(r.best_val_loss), _cell(r.best_iteration),
            _cell(r.test_loss), _cell(r.test_perplexity, 3),
            _cell(round(r.tokens_per_second) if r.tokens_per_second is not None else None),
            _stopped(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    unranked = [entry for entry in ranked if entry.reason is not None]
    if unranked:
        lines += ["", "Ranked last:", ""]
        lines += [f"- `{entry.result.run}`: {entry.reason}" for entry in unranked]
    return "\n".join(lines) + "\n"


def _points(rows: Sequence[Mapping[str, Any]], kind: str, column: str) -> list[tuple[float, float]]:
    points = []
    for row in rows:
        value = _finite(row.get(column))
        if row.get("kind") == kind and value is not None:
            points.append((float(row["iteration"]), value))
    return points


def plot_sweep(ranked: Sequence[RankedRun], path: str | Path, *, title: str = "Sweep: loss curves") -> Path:
    """Every run's val loss curve (train loss faint, same colour) in one PNG, the winner marked."""
    figure = Figure(figsize=(8, 4.8), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    colours = [f"C{i % 10}" for i in range(len(ranked))]
    for index, (entry, colour) in enumerate(zip(ranked, colours, strict=True)):
        r = entry.result
        winner = index == 0 and entry.reason is None
        train = _points(r.metrics, "train", "train_loss")
        val = _points(r.metrics, "val", "val_loss")
        if train:
            axes.plot(*zip(*train, strict=True), color=colour, alpha=0.25, linewidth=1)
        if val:
            loss = f"{r.best_val_loss:.3f}" if r.best_val_loss is not None else "n/a"
            label = f"{r.run}: best val {loss}" + (" (winner)" if winner else "")
            axes.plot(*zip(*val, strict=True), color=colour, marker="o", markersize=3,
                      linewidth=2.5 if winner else 1.3, label=label)
        if winner and r.best_val_loss is not None and r.best_iteration is not None:
            axes.plot([r.best_iteration], [r.best_val_loss], marker="*", markersize=16, color=colour,
                      markeredgecolor="black", linestyle="none")
            axes.annotate(f"winner: {r.run}", (r.best_iteration, r.best_val_loss), textcoords="offset points",
                          xytext=(8, 8), color=colour, fontweight="bold")
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss (cross entropy per token)")
    axes.set_title(f"{title} (val: lines with dots, train: faint)")
    axes.grid(alpha=0.3)
    if any(entry.result.metrics for entry in ranked):
        axes.legend(fontsize="small")
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return target


@dataclass(frozen=True)
class CompareOutputs:
    ranking_md: Path
    ranking_json: Path
    plot: Path
    winner: Path


def compare_runs(results: Sequence[RunResult], outputs: CompareOutputs) -> dict[str, Any]:
    """Rank ``results``, write the table (Markdown + JSON), the PNG and winner.json; return winner.json."""
    ranked = rank_runs(results)
    markdown = ranking_markdown(ranked)
    atomic_write_text(outputs.ranking_md, markdown)
    plot_sweep(ranked, outputs.plot)
    for line in markdown.splitlines():
        if line.startswith("|"):
            logger.info("%s", line)
    best = winner_of(ranked)
    write_json(outputs.ranking_json, {
        "select_by": SELECT_BY,
        "winner": best.result.run,
        "runs": [entry.row() for entry in ranked],
    })
    winner = {
        "run": best.result.run,
        "select_by": SELECT_BY,
        "best_val_loss": best.result.best_val_loss,
        "best_iteration": best.result.best_iteration,
        "settings": dict(best.result.settings),
    }
    write_json(outputs.winner, winner)
    logger.info("winner: %s (best val loss %.4f at iteration %s) of %d run(s)", best.result.run,
                best.result.best_val_loss, best.result.best_iteration, len(ranked))
    return winner


def compare(
    runs: Sequence[str],
    summaries: Sequence[str | Path],
    metrics: Sequence[str | Path],
    test_losses: Sequence[str | Path],
    *,
    ranking: str | Path,
    ranking_json: str | Path,
    plot: str | Path,
    winner: str | Path,
) -> dict[str, Any]:
    """The checkpoint ``compare``: per-run files in the same order as ``runs``; returns winner.json's data."""
    if not len(runs) == len(summaries) == len(metrics) == len(test_losses):
        raise InputFileError("compare: runs, summaries, metrics and test losses differ in number")
    results = [
        RunResult.from_files(run, summary, metric, test_loss)
        for run, summary, metric, test_loss in zip(runs, summaries, metrics, test_losses, strict=True)
    ]
    outputs = CompareOutputs(Path(ranking), Path(ranking_json), Path(plot), Path(winner))
    return compare_runs(results, outputs)
