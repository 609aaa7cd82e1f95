"""The picture of the deltas: one row per metric, tuned - base with its 95% interval and a zero line.

Each metric has its own row and scale (chrF points, rates, characters); a row is green when the tuned
model is significantly better, red when the base is, grey when the interval contains 0.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

from tubetune.evaluate.metrics import METRICS

COLORS = {"tuned": "#1f7a3a", "base": "#a5281b"}
NEUTRAL = "#5b6475"


def _rows(metrics: Mapping[str, Any]) -> list[tuple[str, float, float, float, str]]:
    """(label, delta, low, high, better) of every metric that has an interval."""
    rows = []
    for info in METRICS:
        interval = metrics.get("delta_ci95", {}).get(info.name)
        delta = metrics.get("delta", {}).get(info.name)
        if interval is None or delta is None or None in interval:
            continue
        if not all(math.isfinite(v) for v in (delta, *interval)):
            continue
        rows.append((info.label, float(delta), float(interval[0]), float(interval[1]),
                     str(metrics.get("better", {}).get(info.name, ""))))
    return rows


def delta_plot_png(metrics: Mapping[str, Any]) -> bytes | None:
    """PNG bytes of the deltas with their intervals, or None when no metric has an interval."""
    rows = _rows(metrics)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(7.5, 0.55 * len(rows) + 0.9), squeeze=False)
    for ax, (label, delta, low, high, better) in zip(axes[:, 0], rows, strict=True):
        color = COLORS.get(better, NEUTRAL)
        ax.axvline(0.0, color="#999999", linewidth=1)
        ax.errorbar([delta], [0], xerr=[[delta - low], [high - delta]], fmt="o", color=color, capsize=4)
        span = max(abs(low), abs(high), abs(delta)) * 1.15 or 1.0  # [0, 0]: any scale shows it
        ax.set_xlim(-span, span)
        ax.set_yticks([0], [label], fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_ylim(-0.6, 0.6)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    axes[0, 0].set_title("tuned - base with 95% bootstrap interval (each row its own scale)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


__all__ = ["delta_plot_png"]
