"""Matplotlib figures for reports: one house style, small-multiple panels, PNG bytes ready to embed."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter  # noqa: E402

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F7F7F", "#000000")
INK, MUTED, GRID = "#1f2328", "#59636e", "#e6e8eb"


@dataclass
class Line:
    """One curve of a panel: label, points, an optional shaded band, and whether to mark each point."""

    label: str
    steps: Sequence[float]
    values: Sequence[float]
    band: tuple[Sequence[float], Sequence[float]] | None = None
    markers: bool = False
    color: str | None = None
    marker: str = "o"
    style: str = "-"


def style_axes(ax: Axes, title: str | None = None) -> None:
    """Light grid, no top/right spines, muted ticks: the look of every panel."""
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#c9ced4")
    ax.tick_params(colors=MUTED, labelsize=8, length=3)
    ax.grid(color=GRID, lw=0.8)
    ax.set_axisbelow(True)
    ax.set_xlabel("step", fontsize=8, color=MUTED)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        ax.set_title(title, fontsize=10, color=INK, loc="left", pad=6)


SMOOTH_FROM = 20  # curves with at least this many points get a moving average over about a tenth of them


def smooth_window(n: int) -> int:
    """Width of the centred moving average for a curve of ``n`` points (1: no smoothing)."""
    return 1 if n < SMOOTH_FROM else max(3, (n // 10) | 1)


def moving_average(values: Sequence[float], width: int) -> list[float]:
    """Centred moving average; the window shrinks at both ends so every point keeps a value."""
    half = width // 2
    return [sum(values[max(0, i - half):i + half + 1]) / len(values[max(0, i - half):i + half + 1])
            for i in range(len(values))]


def draw_lines(ax: Axes, lines: Sequence[Line], legend: bool = True) -> None:
    """Plot each line (and its band) in palette order; long curves raw and thin under their moving average."""
    for i, line in enumerate(lines):
        color = line.color or PALETTE[i % len(PALETTE)]
        width = 1 if line.markers else smooth_window(len(line.values))
        values = list(line.values)
        if width > 1:
            ax.plot(line.steps, values, color=color, lw=0.8, ls=line.style, alpha=0.3)
            values = moving_average(values, width)
        if line.band is not None:
            lo, hi = (moving_average(list(b), width) for b in line.band)
            ax.fill_between(line.steps, lo, hi, color=color, alpha=0.16, lw=0)
        mark = line.marker if line.markers or len(line.steps) == 1 else None
        ax.plot(line.steps, values, color=color, lw=1.7, ls=line.style, marker=mark, ms=4, label=line.label,
                alpha=0.95)
    if legend and len(lines) > 1:  # above the plot area, where it hides no data
        ax.legend(fontsize=7, frameon=False, loc="lower left", bbox_to_anchor=(0, 1), ncol=min(3, len(lines)),
                  borderaxespad=0.1, handlelength=1.5, columnspacing=1.0)


def scale_axes(ax: Axes, lines: Sequence[Line], percent: bool) -> None:
    """Fractions on a fixed 0-100% axis; other values with plain tick labels and a visible range when flat."""
    values = [v for line in lines for v in line.values]
    if not values:
        return
    if percent and min(values) >= 0 and max(values) <= 1:
        ax.set_ylim(-0.03, 1.03)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        return
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-9 * max(1.0, abs(hi)):  # a flat curve: from zero to twice its value, so it sits mid-panel
        ax.set_ylim(*sorted((0.0, 2 * hi)) if hi else (-1.0, 1.0))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.4g}"))


def panel_png(lines: Sequence[Line], percent: bool = False, size: tuple[float, float] = (3.8, 2.3),
              dpi: int = 160) -> bytes:
    """One small-multiple panel (no title: the page sets it) as PNG bytes."""
    fig, ax = plt.subplots(figsize=size)
    style_axes(ax)
    draw_lines(ax, lines)
    scale_axes(ax, lines, percent)
    fig.tight_layout(pad=0.4)
    return fig_png(fig, dpi)


def fig_png(fig: Figure, dpi: int = 160) -> bytes:
    """Render and close ``fig``; PNG bytes without the tool's metadata."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
