"""The one heatmap drawing of badit (task x task matrices, routing per task, score matrices): used by
`analyze` (PNG files) and by ``badit report`` (embedded images). Matplotlib, headless (Agg)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    # Task and run names are text, never math: a name such as `$\frac$` would otherwise be parsed as
    # mathtext and stop the figure with a parse error (and `$x$` would be typeset).
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def printable_texts(fig) -> None:
    """Strip control characters from every text of ``fig`` (titles, ticks, legends) before it is drawn:
    a task or run name with an ANSI escape would show missing-glyph boxes, and matplotlib's warning about
    them would print the raw escape to the terminal."""
    from matplotlib.text import Text
    from matplotlib.ticker import FixedFormatter, FuncFormatter

    from badit.errors import printable

    for text in fig.findobj(Text):
        original = text.get_text()
        if printable(original) != original:
            text.set_text(printable(original))
    for ax in fig.axes:  # tick labels are made again when the figure is drawn: clean what makes them
        for axis in (ax.xaxis, ax.yaxis):
            made = axis.get_major_formatter()
            if isinstance(made, (FuncFormatter, FixedFormatter)):  # text labels; numbers are left alone
                axis.set_major_formatter(FuncFormatter(lambda x, pos, made=made: printable(made(x, pos))))


def short_label(name: str, limit: int = 28) -> str:
    """``name`` cut to ``limit`` characters (``...`` at the end) for an axis or a legend."""
    return name if len(name) <= limit else name[: limit - 3] + "..."


def heatmap_figure(
    matrix: Sequence[Sequence[float]],
    xlabels: Sequence[str],
    ylabels: Sequence[str],
    title: str,
    colorbar: str = "",
    xlabel: str = "",
    ylabel: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool = True,
    max_width: float = 7.5,
):
    """A heatmap figure (rows = ``ylabels``, columns = ``xlabels``): diverging colours when ``vmin`` < 0,
    values written in the cells up to 12 x 12 when ``annotate``, and a (labelled) colour bar. The caller
    saves and closes it."""
    plt = pyplot()
    rows, cols = len(ylabels), len(xlabels)
    fig, ax = plt.subplots(figsize=(min(max_width, 2.5 + 0.7 * cols), min(7.0, 1.6 + 0.4 * rows)))
    diverging = vmin is not None and vmin < 0
    im = ax.imshow(matrix, cmap="coolwarm" if diverging else "viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(cols), [short_label(x, 20) for x in xlabels], rotation=30, ha="right")
    ax.set_yticks(range(rows), [short_label(y, 36) for y in ylabels])
    if annotate and rows * cols <= 144:
        for r in range(rows):
            for c in range(cols):
                value = float(matrix[r][c]) if matrix[r][c] is not None else math.nan
                if not math.isnan(value):
                    color = "black" if diverging else "white"
                    ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, shrink=0.85, label=colorbar)
    return fig
