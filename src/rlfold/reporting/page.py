"""``rlfold report RUN_DIR``: one self-contained HTML page of a run (curves, summary, samples, config)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rlfold.core.errors import RlfoldError
from rlfold.reporting.charts import data_uri, panel_png, smooth_window
from rlfold.reporting.curves import held_out_keys, run_panels
from rlfold.reporting.html import esc, fmt, fmt_delta, page, table
from rlfold.reporting.rundata import RunData, is_rate, load_run
from rlfold.trainers.loop import CONFIG_FILE
from rlfold.trainers.metrics import METRICS_FILE, SUMMARY_KEYS

REPORT_FILE = "report.html"
SAMPLE_STEPS = 6  # steps of samples.jsonl shown: the first, the last and evenly spaced ones between
SETTINGS = ("model.path", "task.name", "algo.advantage", "algo.policy_loss", "algo.loss_agg", "algo.kl_coef",
            "train.lr", "train.prompts_per_step", "rollout.n", "rollout.temperature", "train.ppo_epochs")


def _get(cfg: dict[str, Any], dotted: str) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``, or None."""
    node: Any = cfg
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.2f} h"


def run_facts(run: RunData) -> list[tuple[str, str]]:
    """Steps, timings and headline settings of the run, as (label, escaped value) rows."""
    steps = [int(r["step"]) for r in run.rows if isinstance(r.get("step"), int)]
    facts = [("steps logged", f"{max(steps, default=0)}"), ("recipe", esc(run.name))]
    if run.seed is not None:
        facts.append(("seed", esc(run.seed)))
    step_time = sum(run.series("timing_s/step")[1])
    if step_time:
        facts.append(("training time (sum of timing_s/step)", _duration(step_time)))
    cfg_file, metrics = run.path / CONFIG_FILE, run.path / METRICS_FILE
    if cfg_file.is_file():
        span = metrics.stat().st_mtime - cfg_file.stat().st_mtime
        if span > 0:
            facts.append(("wall time (config.yaml to the last metrics row)", _duration(span)))
    facts += [(key, f"<code>{esc(v)}</code>") for key in SETTINGS if (v := _get(run.config, key)) is not None]
    return facts


def _cards(run: RunData) -> str:
    """Headline cards: each held-out metric first -> last, then the step count."""
    cards = []
    for key in held_out_keys(run):
        (s0, v0), (s1, v1) = run.first_last(key)  # type: ignore[misc]
        cards.append(f'<div class="card"><div class="k">{esc(key)}</div>'
                     f'<div class="v">{fmt(v0, key)} → {fmt(v1, key)}</div>'
                     f'<div class="d">{fmt_delta(v0, v1, key)} · step {int(s0)} → {int(s1)}</div></div>')
    last = run.first_last("reward/mean")
    if last:
        (_, r0), (_, r1) = last
        cards.append(f'<div class="card"><div class="k">reward/mean</div><div class="v">{fmt(r0)} → {fmt(r1)}</div>'
                     f'<div class="d">{fmt_delta(r0, r1, "reward/mean")}</div></div>')
    return f'<section class="cards">{"".join(cards)}</section>' if cards else ""


def _curves(run: RunData) -> str:
    """The grid of small multiples, each an embedded PNG."""
    figs = []
    for p in run_panels(run):
        keys = ", ".join(p.keys)
        png = panel_png(p.lines, percent=all(is_rate(k) for k in p.keys))
        figs.append(f'<figure><figcaption>{esc(p.title)}<span class="keys mono">{esc(keys)}</span></figcaption>'
                    f'<img alt="{esc(p.title)}: {esc(keys)}" src="{data_uri(png)}"></figure>')
    steps = max((len(run.series(k)[0]) for k in ("reward/mean", "acc/mean")), default=0)
    note = ('<p class="note">Curves of 20 or more points: thick, a centred moving average over about a tenth of '
            "the steps; thin, the raw values. Black: held-out evaluation (greedy).</p>"
            if smooth_window(steps) > 1 else '<p class="note">Black: held-out evaluation (greedy).</p>')
    return f'<h2 id="curves">Learning curves</h2>{note}<div class="grid">{"".join(figs)}</div>'


def _summary(run: RunData) -> str:
    """Run facts, held-out first vs last, and first/last/min/max of the training metrics."""
    held = []
    for key in held_out_keys(run):
        (s0, v0), (s1, v1) = run.first_last(key)  # type: ignore[misc]
        held.append([f"<code>{esc(key)}</code>", fmt(v0, key), f"{int(s0)}", fmt(v1, key), f"{int(s1)}",
                     fmt_delta(v0, v1, key)])
    train = []
    for key in SUMMARY_KEYS:
        steps, vals = run.series(key)
        if vals:
            cells = (fmt(v, key) for v in (vals[0], vals[-1], min(vals), max(vals)))
            train.append([f"<code>{esc(key)}</code>", *cells])
    held_html = (table(["metric", "first", "step", "last", "step", "change"], held, [False, *[True] * 5])
                 if held else '<p class="note">No held-out evaluation was logged (no <code>val/*</code> metrics).</p>')
    return ('<h2 id="summary">Summary</h2><div class="two"><div>'
            f"<h3>Held-out evaluation (first vs last)</h3>{held_html}"
            f"<h3>Training metrics</h3>{table(['metric', 'first', 'last', 'min', 'max'], train, [False, *[True] * 4])}"
            f"</div><div><h3>Run</h3>{table(None, run_facts(run), [False, False])}</div></div>")


def pick_sample_steps(steps: list[int], k: int = SAMPLE_STEPS) -> list[int]:
    """Up to ``k`` of the logged steps: the first, the last and evenly spaced ones between."""
    uniq = sorted(set(steps))
    if len(uniq) <= k:
        return uniq
    return sorted({uniq[round(i * (len(uniq) - 1) / (k - 1))] for i in range(k)})


def _bar(value: float, scale: float, positive: str, negative: str) -> str:
    """A small inline bar whose length is ``|value| / scale``."""
    width = 0 if scale <= 0 or value == 0 else max(1, round(40 * min(1.0, abs(value) / scale)))
    return f'<span class="bar" style="width:{width}px;background:{positive if value >= 0 else negative}"></span>'


def _samples(run: RunData) -> str:
    """Sample completions of a few steps with reward, advantage and finish reason."""
    if not run.samples:
        return '<h2 id="samples">Samples</h2><p class="note">The run logged no samples (samples.jsonl is empty).</p>'
    shown = pick_sample_steps([int(s.get("step", 0)) for s in run.samples])
    rows = [s for s in run.samples if int(s.get("step", 0)) in shown]
    adv_scale = max((abs(float(s.get("advantage", 0.0))) for s in rows), default=0.0)
    rew_scale = max((abs(float(s.get("reward", 0.0))) for s in rows), default=0.0)
    body, last_step = [], None
    for s in rows:
        if s.get("step") != last_step:
            last_step = s.get("step")
            body.append(f'<tr class="step"><td colspan="6">step {esc(last_step)}</td></tr>')
        comp = s.get("completion", "")
        comp_html = f'<span class="comp mono">{esc(comp)}</span>' if comp else '<span class="empty">(empty)</span>'
        reward, adv = float(s.get("reward", 0.0)), float(s.get("advantage", 0.0))
        body.append("<tr>" + "".join([
            f'<td class="mono">{esc(s.get("prompt", ""))}</td>', f"<td>{comp_html}</td>",
            f'<td class="mono">{esc(s.get("answer", ""))}</td>',
            f'<td class="n">{reward:.3g}{_bar(reward, rew_scale, "#009E73", "#D55E00")}</td>',
            f'<td class="n">{"0" if adv == 0 else f"{adv:+.3g}"}{_bar(adv, adv_scale, "#0072B2", "#D55E00")}</td>',
            f"<td>{esc(s.get('finish', ''))}</td>"]) + "</tr>")
    head = "".join(f'<th{c}>{h}</th>' for h, c in [("prompt", ""), ("completion", ""), ("answer", ""),
                                                   ("reward", ' class="n"'), ("advantage", ' class="n"'),
                                                   ("finish", "")])
    note = (f"{len(rows)} of {len(run.samples)} logged samples, from steps {', '.join(map(str, shown))}; "
            "the advantage is the mean over the completion's tokens.")
    return (f'<h2 id="samples">Samples</h2><p class="note">{esc(note)}</p>'
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _config(run: RunData) -> str:
    """The resolved config.yaml, verbatim."""
    if not run.config_text:
        return f'<h2 id="config">Config</h2><p class="note">No {CONFIG_FILE} in {esc(run.path)}.</p>'
    return (f'<h2 id="config">Config</h2><p class="note">{esc(run.path / CONFIG_FILE)}: the validated config, '
            f'every default filled in.</p><pre class="config">{esc(run.config_text)}</pre>')


def render_report(run: RunData) -> str:
    """The report page of ``run`` as an HTML string."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    seed = f" · seed {esc(run.seed)}" if run.seed is not None else ""
    header = (f"<header><h1>{esc(run.name)}</h1><div class=\"sub\"><span class=\"mono\">{esc(run.path)}</span>"
              f"{seed} · report written {when}</div>{_cards(run)}</header>")
    body = header + _curves(run) + _summary(run) + _samples(run) + _config(run)
    return page(f"rlfold report: {run.name} ({run.path.name})", body)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``out``) and return its path."""
    run = load_run(run_dir)
    out = Path(out) if out else run.path / REPORT_FILE
    try:
        out.write_text(render_report(run), encoding="utf-8")
    except OSError as exc:
        raise RlfoldError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out
