"""``rlfold plot RUN_DIR``: a PNG of reward, accuracy, length, entropy and KL curves from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rlfold.core.errors import RlfoldError  # noqa: E402
from rlfold.trainers.metrics import METRICS_FILE, read_jsonl  # noqa: E402

# (title, [(metric, legend label)])
PANELS = [
    ("reward", [("reward/mean", "reward/mean")]),
    ("accuracy", [("acc/mean", "acc/mean (sampled rollouts)")]),
    ("response length", [("response_length/mean", "response_length/mean (tokens)")]),
    ("entropy", [("actor/entropy", "actor/entropy")]),
    ("KL", [("actor/kl", "actor/kl (to reference)"), ("actor/ppo_kl", "actor/ppo_kl (to rollout policy)")]),
]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``curves.png`` (or ``out``) and return its path."""
    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / METRICS_FILE)
    if not rows:
        raise RlfoldError(f"{run_dir / METRICS_FILE} has no rows to plot (is {run_dir} a run directory?)")
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    for ax, (title, keys) in zip(axes, PANELS):
        for key, label in keys:
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=label, lw=1.2)
        if title == "accuracy":
            val = [(r["step"], v) for r in rows for k, v in r.items() if k.startswith("val/") and k.endswith("/acc")]
            if val:
                ax.plot(*zip(*val), "o--", label="held-out greedy acc", color="black")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
