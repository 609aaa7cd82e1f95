"""Loss curves of a training run as a PNG (matplotlib, Agg canvas: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_losses(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    best_iteration: int | None = None,
    batches_per_epoch: int | None = None,
    title: str = "Fine-tuning loss",
) -> Path:
    """Train and val loss against iteration (epochs on top), the best val marked; returns ``path``."""
    train = [(r["iteration"], r["train_loss"])
             for r in rows if r["kind"] == "train" and r["train_loss"] is not None]
    val = [(r["iteration"], r["val_loss"]) for r in rows if r["kind"] == "val" and r["val_loss"] is not None]
    figure = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", linewidth=1.5)
    if val:
        axes.plot(*zip(*val, strict=True), label="val loss", color="tab:orange", marker="o", linewidth=1.5)
    if best_iteration is not None:
        best = [loss for iteration, loss in val if iteration == best_iteration]
        axes.axvline(best_iteration, color="tab:green", linestyle="--", linewidth=1)
        if best:
            axes.plot([best_iteration], best, marker="*", markersize=14, color="tab:green", linestyle="none")
            axes.text(0.98, 0.96, f"best val loss {best[0]:.3f} at iteration {best_iteration}",
                      transform=axes.transAxes, horizontalalignment="right", verticalalignment="top",
                      color="tab:green")
    if batches_per_epoch:
        per_epoch = float(batches_per_epoch)

        def to_epoch(iteration: Any) -> Any:
            return iteration / per_epoch

        def to_iteration(epoch: Any) -> Any:
            return epoch * per_epoch

        top = axes.secondary_xaxis("top", functions=(to_epoch, to_iteration))
        top.set_xlabel("epoch")
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss (cross entropy per token)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    if train or val:
        axes.legend()
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return target
