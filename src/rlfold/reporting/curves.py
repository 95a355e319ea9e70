"""Which learning curves a run report shows: panels chosen from the metrics the run actually logged."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from rlfold.reporting.charts import Line
from rlfold.reporting.rundata import RunData

# (title, metric patterns, band) in page order; band: "std" (value ± <prefix>/std) or "minmax"
# (<prefix>/min .. <prefix>/max). Held-out val/<task>/<metric> panels are added after the first two.
PANELS: list[tuple[str, list[str], str | None]] = [
    ("reward (mean ± std over rollouts)", ["reward/mean"], "std"),
    ("accuracy of sampled rollouts", ["acc/mean"], None),
    ("reward per function", ["reward/*/mean"], None),
    ("response length (tokens, min–max band)", ["response_length/mean"], "minmax"),
    ("responses cut at max_new_tokens", ["response_length/clip_ratio"], None),
    ("groups with zero reward std", ["frac_reward_zero_std"], None),
    ("entropy", ["actor/entropy"], None),
    ("KL", ["actor/kl", "actor/ppo_kl", "actor/reward_kl"], None),
    ("KL coefficient", ["actor/kl_coef"], None),
    ("policy loss", ["actor/pg_loss"], None),
    ("clip fraction", ["actor/pg_clipfrac", "actor/pg_clipfrac_lower"], None),
    ("gradient norm", ["actor/grad_norm"], None),
    ("learning rate", ["actor/lr"], None),
    ("value loss", ["critic/value_loss"], None),
    ("value explained variance", ["critic/vf_explained_var"], None),
    ("turns per episode", ["turns/mean"], None),
    ("environment", ["env/*/mean"], None),
    ("throughput (tokens/s)", ["perf/tokens_per_s"], None),
    ("time per step (s)", ["timing_s/step", "timing_s/gen", "timing_s/update"], None),
]
HEADLINE = 2  # panels before the held-out ones


@dataclass
class Panel:
    """A titled panel: the metric keys it shows and its lines."""

    title: str
    keys: list[str]
    lines: list[Line]


def held_out_keys(run: RunData) -> list[str]:
    """``val/<task>/<metric>`` keys the run logged (accuracy first)."""
    keys = [k for k in run.metric_names() if k.startswith("val/")]
    return sorted(keys, key=lambda k: (not k.endswith("/acc"), k))


def _band(run: RunData, key: str, kind: str | None, steps: list[float]) -> tuple[list[float], list[float]] | None:
    """The shaded band of ``key``, aligned with its steps, or None when the run lacks it."""
    if kind is None:
        return None
    prefix = key.rsplit("/", 1)[0]
    values = dict(zip(*run.series(key)))
    if kind == "std":
        spread = dict(zip(*run.series(f"{prefix}/std")))
        if not all(s in spread for s in steps):
            return None
        return [values[s] - spread[s] for s in steps], [values[s] + spread[s] for s in steps]
    lo, hi = dict(zip(*run.series(f"{prefix}/min"))), dict(zip(*run.series(f"{prefix}/max")))
    if not all(s in lo and s in hi for s in steps):
        return None
    return [lo[s] for s in steps], [hi[s] for s in steps]


def _panel(run: RunData, title: str, patterns: list[str], band: str | None) -> Panel | None:
    """The panel of the keys matching ``patterns``, or None when the run logged none of them."""
    names = run.metric_names()
    keys = [k for p in patterns for k in (sorted(fnmatch.filter(names, p)) if "*" in p else [p] if p in names else [])]
    lines = []
    for key in keys:
        steps, values = run.series(key)
        if steps:
            label = key.split("/")[1] if patterns[0].count("*") else key
            sparse = len(steps) <= 12
            lines.append(Line(label, steps, values, _band(run, key, band, steps), markers=sparse))
    return Panel(title, keys, lines) if lines else None


def run_panels(run: RunData) -> list[Panel]:
    """Every panel the run has data for: headline curves, held-out metrics, then the rest."""
    out = [p for spec in PANELS[:HEADLINE] if (p := _panel(run, *spec))]
    for key in held_out_keys(run):
        task, metric = key.split("/", 2)[1:]
        p = _panel(run, f"held-out {metric} ({task}, greedy)" if metric == "acc" else f"held-out {metric} ({task})",
                   [key], None)
        if p:
            for line in p.lines:
                line.markers, line.color = True, "#000000"
            out.append(p)
    out += [p for spec in PANELS[HEADLINE:] if (p := _panel(run, *spec))]
    return out
