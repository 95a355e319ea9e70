"""HTML building blocks shared by the report and the comparison page: the stylesheet, tables, numbers."""

from __future__ import annotations

import html
import math
from typing import Any, Sequence

from rlfold.reporting.rundata import is_rate

CSS = """
:root { --ink:#1f2328; --muted:#59636e; --line:#d8dee4; --soft:#f6f8fa; --accent:#0072B2;
        --good:#1a7f37; --bad:#cf222e; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 28px 32px 64px; }
header { border-bottom: 1px solid var(--line); padding-bottom: 16px; margin-bottom: 8px; }
h1 { font-size: 28px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 19px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 8px; color: var(--muted); font-weight: 600; }
.sub { color: var(--muted); font-size: 13.5px; }
code, pre, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace;
                   font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 12px; margin-top: 20px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: var(--soft); }
.card .k { color: var(--muted); font-size: 12.5px; }
.card .v { font-size: 22px; font-weight: 600; white-space: nowrap; font-variant-numeric: tabular-nums; margin-top: 2px; }
.card .d { font-size: 13px; font-variant-numeric: tabular-nums; }
.up { color: var(--good); } .down { color: var(--bad); } .flat { color: var(--muted); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 14px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 10px 10px 6px; }
figcaption { font-size: 14px; font-weight: 600; }
figcaption .keys { display: block; font-weight: 400; color: var(--muted); font-size: 12px; }
figure img { width: 100%; height: auto; display: block; margin-top: 4px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { font-size: 12.5px; color: var(--muted); font-weight: 600; background: var(--soft); }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
tr.step td { background: var(--soft) !important; color: var(--muted); font-size: 12.5px; font-weight: 600; }
.two { display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }
@media (max-width: 900px) { .two { grid-template-columns: 1fr; } }
.bar { display: inline-block; height: 8px; border-radius: 2px; vertical-align: middle; margin-left: 6px; }
.comp { white-space: pre-wrap; word-break: break-word; background: var(--soft); padding: 1px 5px; border-radius: 4px; }
.empty { color: var(--muted); font-style: italic; }
pre.config { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px;
             overflow: auto; max-height: 640px; line-height: 1.45; }
details summary { cursor: pointer; color: var(--accent); margin: 8px 0; }
.note { color: var(--muted); font-size: 13px; margin: 6px 0 12px; }
"""


def esc(text: Any) -> str:
    """HTML-escape ``text`` (any value, via ``str``)."""
    return html.escape(str(text), quote=True)


def fmt(value: Any, key: str = "") -> str:
    """A metric value for a table: percent for rates, 4 significant digits otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return esc(value)
    if not math.isfinite(value):
        return str(value)
    if is_rate(key):
        return f"{value:.1%}"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e6:
        return f"{int(value)}"
    return f"{value:.4g}"


def fmt_delta(first: float, last: float, key: str) -> str:
    """The change first -> last, with a class for its sign (points for rates)."""
    d = last - first
    cls = "flat" if abs(d) < 1e-12 else ("up" if d > 0 else "down")
    text = f"{d * 100:+.1f} pts" if is_rate(key) else f"{d:+.4g}"
    return f'<span class="{cls}">{text}</span>'


def table(head: Sequence[str] | None, rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    """A ``<table>`` of already-escaped cells (no header row when ``head`` is None); ``numeric`` right-aligns."""
    cls = [' class="n"' if n else "" for n in numeric]
    th = "" if head is None else (
        "<thead><tr>" + "".join(f"<th{c}>{esc(h)}</th>" for h, c in zip(head, cls)) + "</tr></thead>")
    body = "".join("<tr>" + "".join(f"<td{c}>{cell}</td>" for cell, c in zip(r, cls)) + "</tr>" for r in rows)
    return f"<table>{th}<tbody>{body}</tbody></table>"


def page(title: str, body: str) -> str:
    """A complete, self-contained HTML document (inline CSS, no external resources)."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")
