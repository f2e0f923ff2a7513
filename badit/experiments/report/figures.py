"""Matplotlib figures for the report, returned as ``data:image/png;base64,...`` URIs (no file, no network).

Every figure has a title, axis labels and a legend (or a labelled colour bar for heatmaps).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from badit.analysis.plots import heatmap_figure, printable_texts, pyplot, short_label

WIDTH_IN = 7.5  # inches at DPI: 900 px, shown at most 100% of a 1280 px page's content column
DPI = 120
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"]


def _uri(fig) -> str:
    plt = pyplot()
    buffer = io.BytesIO()
    printable_texts(fig)
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def grouped_bars(
    categories: Sequence[str],
    series: dict[str, tuple[Sequence[float], Sequence[float | tuple[float, float] | None]]],
    title: str,
    ylabel: str,
    xlabel: str = "task",
) -> str:
    """One group of bars per category, one bar per series (label -> (values, errors)); an error is None,
    a half-width, or the (low, high) ends of an interval. A bar of height 0 is marked at 0 (a bar chart
    would draw nothing: a 0.00 score must not look like a missing run)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 3.6))
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (label, (values, errors)) in enumerate(series.items()):
        x = [c + (i - (n - 1) / 2) * width for c in range(len(categories))]
        below, above = [], []
        for value, error in zip(values, errors):
            if isinstance(error, tuple):  # an interval's ends
                below.append(max(value - error[0], 0.0))
                above.append(max(error[1] - value, 0.0))
            else:
                below.append(0.0 if error is None else error)
                above.append(0.0 if error is None else error)
        color = COLORS[i % len(COLORS)]
        has_errors = any(below) or any(above)
        ax.bar(
            x, values, width, label=label, color=color, yerr=[below, above] if has_errors else None, capsize=3
        )
        zeros = [xi for xi, value in zip(x, values) if value == 0]
        if zeros:
            ax.plot(zeros, [0.0] * len(zeros), marker="^", linestyle="none", color=color, markersize=6)
    ax.set_xticks(range(len(categories)), [short_label(c) for c in categories], rotation=20, ha="right")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(
        fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )  # beside, not on, the bars
    ax.grid(axis="y", alpha=0.3)
    return _uri(fig)


Line = tuple[str, Sequence[float], Sequence[float]]  # (legend label, x, y)


def line_panels(panels: Sequence[tuple[str, str, Sequence[Line]]], xlabel: str, title: str) -> str:
    """Side-by-side line charts sharing an x label: each panel is (panel title, y label, lines)."""
    plt = pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(WIDTH_IN * 1.3, 3.4), squeeze=False, layout="constrained"
    )
    for ax, (panel_title, ylabel, lines) in zip(axes[0], panels):
        for i, (label, x, y) in enumerate(lines):
            ax.plot(x, y, marker="." if len(x) < 30 else None, label=label, color=COLORS[i % len(COLORS)])
        if not lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if lines:
            # below the axes, where it hides no line
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    fig.suptitle(title)
    return _uri(fig)


def heatmap(matrix, xlabels, ylabels, title: str, xlabel: str, ylabel: str, colorbar: str, **options) -> str:
    """`badit.analysis.plots.heatmap_figure` (``options``: vmin, vmax, annotate) as a data: URI."""
    return _uri(
        heatmap_figure(
            matrix, xlabels, ylabels, title, colorbar, xlabel, ylabel, max_width=WIDTH_IN, **options
        )
    )


def task_heatmap(matrix, tasks, title: str, colorbar: str, vmin: float, vmax: float) -> str:
    """A task-by-task matrix (gradient cosine, neuron overlap, preference similarity) on a fixed scale."""
    return heatmap(matrix, tasks, tasks, title, "task", "task", colorbar, vmin=vmin, vmax=vmax)
