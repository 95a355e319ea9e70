"""``rlfold compare RUN ...``: chosen metrics of several runs in one figure; seeds of a recipe as mean ± std."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt

from rlfold.core.errors import RlfoldError
from rlfold.reporting.charts import (MUTED, PALETTE, Line, data_uri, draw_lines, fig_png, scale_axes, smooth_window,
                                     style_axes)
from rlfold.reporting.html import esc, fmt, page, table
from rlfold.reporting.rundata import RunData, check_metrics, is_rate, load_run

COMPARE_FILE = "compare.png"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
STYLES = ("-", "--", "-.", ":")  # with the colour, so curves that coincide stay visible
DEFAULT_METRICS = ("val/*/acc", "reward/mean", "acc/mean", "response_length/mean")
FORMATS = (".png", ".html")


def default_metrics(runs: Sequence[RunData]) -> list[str]:
    """Held-out accuracy, reward, sampled accuracy and length: those that some run logged."""
    names = {k for run in runs for k in run.metric_names()}
    out: list[str] = []
    for m in DEFAULT_METRICS:
        if m == "val/*/acc":
            out += sorted(k for k in names if k.startswith("val/") and k.endswith("/acc"))
        elif m in names:
            out.append(m)
    return out or sorted(names)[:4]


def group_runs(runs: Sequence[RunData]) -> dict[str, list[RunData]]:
    """Runs keyed by recipe name, in the order given (same name: seeds of one recipe)."""
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.name, []).append(run)
    return groups


def _seeds(runs: Sequence[RunData]) -> str:
    """``seeds 0, 1`` (or the directory names when a config does not say)."""
    if all(r.seed is not None for r in runs):
        return "seeds " + ", ".join(str(r.seed) for r in runs)
    return ", ".join(r.path.name for r in runs)


def group_lines(name: str, runs: Sequence[RunData], metric: str, color: str, marker: str = "o",
                style: str = "-") -> list[Line]:
    """One line per run, or for two or more runs of a recipe their mean ± std (sample std) at shared steps."""
    having = [r for r in runs if r.series(metric)[0]]
    if len(having) == 1:
        (run,) = having
        suffix = f"seed {run.seed}" if len(runs) > 1 and run.seed is not None else run.path.name
        return [Line(f"{name} ({suffix})", *run.series(metric), markers=metric.startswith("val/"), color=color,
                     marker=marker, style=style)]
    series = [dict(zip(*r.series(metric))) for r in having]
    shared = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not shared:
        return [Line(f"{name} ({r.path.name})", *r.series(metric), color=color, marker=marker, style=style)
                for r in having]
    mean = [statistics.fmean(s[x] for s in series) for x in shared]
    std = [statistics.stdev([s[x] for s in series]) for x in shared]
    return [Line(f"{name}: mean ± std of {len(having)} runs ({_seeds(having)})", shared, mean,
                 ([m - d for m, d in zip(mean, std)], [m + d for m, d in zip(mean, std)]),
                 markers=metric.startswith("val/"), color=color, marker=marker, style=style)]


def compare_figure(runs: Sequence[RunData], metrics: Sequence[str]) -> bytes:
    """PNG bytes of one panel per metric, every recipe in its own colour, one legend for all."""
    groups = group_runs(runs)
    cols = 2 if len(metrics) in (2, 4) else min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.1 * rows + 0.5), squeeze=False)
    handles: dict[str, object] = {}
    smoothed = False
    for ax, metric in zip(axes.flat, metrics):
        style_axes(ax, metric)
        lines = [ln for i, (name, members) in enumerate(groups.items())
                 for ln in group_lines(name, members, metric, PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)],
                                         STYLES[i % len(STYLES)])]
        draw_lines(ax, lines, legend=False)
        smoothed |= any(not ln.markers and smooth_window(len(ln.values)) > 1 for ln in lines)
        scale_axes(ax, lines, is_rate(metric))
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
        if not lines:
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes,
                    color="#59636e", fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    legend_rows = math.ceil(len(handles) / min(3, max(1, len(handles))))
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(3, max(1, len(handles))),
               frameon=False, fontsize=9)
    foot = 0.0
    if smoothed:
        foot = 0.035 / rows
        fig.text(0.01, 0.01, "thick: centred moving average over about a tenth of the steps; thin: the raw values",
                 fontsize=8, color=MUTED, va="bottom")
    fig.tight_layout(rect=(0, foot, 1, 1 - (0.07 * legend_rows + 0.02) / rows))
    return fig_png(fig, dpi=130)


def _compare_page(runs: Sequence[RunData], metrics: Sequence[str], png: bytes) -> str:
    """An HTML page with the figure and a table of each run's last value of each metric."""
    rows = []
    for run in runs:
        last = [(fl[1][1] if (fl := run.first_last(m)) else None) for m in metrics]
        rows.append([esc(run.name), f'<span class="mono">{esc(run.path)}</span>', esc(run.seed), *
                     ("–" if v is None else fmt(v, m) for v, m in zip(last, metrics))])
    head = ["recipe", "run directory", "seed", *(f"{m} (last)" for m in metrics)]
    body = (f"<header><h1>Run comparison</h1><div class=\"sub\">{len(runs)} runs · runs that share a recipe name "
            "are drawn as their mean ± std (sample std over runs, at the steps every run logged)</div></header>"
            f'<h2>Curves</h2><img style="max-width:100%" alt="comparison of {esc(", ".join(metrics))}" '
            f'src="{data_uri(png)}"><h2>Runs</h2>{table(head, rows, [False, False, True, *[True] * len(metrics)])}')
    return page("rlfold compare", body)


def compare_runs(run_dirs: Sequence[str | Path], metrics: Sequence[str] | None = None,
                 out: str | Path | None = None) -> Path:
    """Write the comparison figure (a PNG, or an HTML page with it) and return its path."""
    if not run_dirs:
        raise RlfoldError("compare needs at least one run directory")
    seen: set[Path] = set()
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            raise RlfoldError(f"{d}: run directory given twice")
        seen.add(key)
    out = Path(out) if out else Path(COMPARE_FILE)
    if out.suffix.lower() not in FORMATS:
        raise RlfoldError(f"--out {out}: unknown format {out.suffix or '(none)'!r}; use one of {', '.join(FORMATS)}")
    runs = [load_run(d) for d in run_dirs]
    chosen = list(metrics) if metrics else default_metrics(runs)
    check_metrics(runs, chosen)
    png = compare_figure(runs, chosen)
    try:
        if out.suffix.lower() == ".html":
            out.write_text(_compare_page(runs, chosen, png), encoding="utf-8")
        else:
            out.write_bytes(png)
    except OSError as exc:
        raise RlfoldError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out

