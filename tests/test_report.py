"""``rlfold report`` and ``rlfold compare`` on real tiny runs: page content, seed bands, errors, a browser render."""

import base64
import html
import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from rlfold.cli import main
from rlfold.reporting.charts import moving_average, smooth_window
from rlfold.reporting.compare import compare_runs, group_lines, group_runs
from rlfold.reporting.page import pick_sample_steps
from rlfold.reporting.rundata import load_run

TINY = ["train.steps=3", "train.prompts_per_step=2", "rollout.n=2", "task.held_out_size=4", "eval.size=4",
        "log.progress=false", "checkpoint.every=0"]
CHROMIUM = Path("/usr/bin/chromium")
PNG_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two seeds of grpo and one dr_grpo run, three steps each (built once for the module)."""
    root = tmp_path_factory.mktemp("runs")
    out = {"grpo0": root / "grpo-s0", "grpo1": root / "grpo-s1", "dr": root / "dr-grpo"}
    for key, recipe, seed in (("grpo0", "grpo", 0), ("grpo1", "grpo", 1), ("dr", "dr_grpo", 0)):
        assert main(["train", recipe, *TINY, f"seed={seed}", f"run_dir={out[key]}"]) == 0
    return out


@pytest.fixture(scope="module")
def report(runs) -> tuple[Path, str]:
    """The report of the seed-0 grpo run, written by the CLI to its default place."""
    assert main(["report", str(runs["grpo0"])]) == 0
    path = runs["grpo0"] / "report.html"
    return path, path.read_text(encoding="utf-8")


def _rows(run: Path) -> list[dict]:
    """The run's metrics.jsonl rows."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _fmt(key: str, v: float) -> str:
    """The page's number format, restated: rates as percent, whole numbers bare, else 4 significant digits."""
    if key.endswith("/acc") or "/pass@" in key:
        return f"{v:.1%}"
    return f"{int(v)}" if float(v).is_integer() else f"{v:.4g}"


def test_report_embeds_curves_and_nothing_external(report):
    path, page = report
    images = PNG_URI.findall(page)
    assert len(images) >= 8  # reward, accuracy, three held-out panels, length, entropy, KL, ...
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    for title in ("reward (mean ± std over rollouts)", "held-out acc (arith, greedy)", "held-out pass@4 (arith)",
                  "entropy", "KL"):
        assert f"<figcaption>{html.escape(title)}<" in page


def test_report_summary_matches_metrics_jsonl(runs, report):
    _, page = report
    rows = _rows(runs["grpo0"])
    val_keys = sorted({k for r in rows for k in r if k.startswith("val/")})
    assert {"val/arith/acc", "val/arith/pass@4", "val/arith/length"} <= set(val_keys)
    for key in val_keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        (s0, v0), (s1, v1) = pts[0], pts[-1]
        cells = "".join(f'<td class="n">{c}</td>' for c in (_fmt(key, v0), s0, _fmt(key, v1), s1))
        assert f"<td><code>{key}</code></td>{cells}" in page, key
    first_reward = next(r["reward/mean"] for r in rows if "reward/mean" in r)
    last_reward = [r["reward/mean"] for r in rows if "reward/mean" in r][-1]
    assert f'<td><code>reward/mean</code></td><td class="n">{first_reward:.4g}</td><td class="n">{last_reward:.4g}' \
        in page
    assert "<td>steps logged</td><td>3</td>" in page
    assert "training time (sum of timing_s/step)" in page


def test_report_shows_samples_and_config(runs, report):
    _, page = report
    samples = [json.loads(line) for line in (runs["grpo0"] / "samples.jsonl").read_text().splitlines()]
    assert samples
    for s in samples:  # three steps: all of them are shown
        assert html.escape(s["prompt"]) in page
        assert f'{s["reward"]:.3g}<span class="bar"' in page
    assert any(s["advantage"] != 0 for s in samples)
    for s in (s for s in samples if s["advantage"] != 0):
        assert f'{s["advantage"]:+.3g}<span class="bar"' in page
    config = (runs["grpo0"] / "config.yaml").read_text()
    assert f'<pre class="config">{html.escape(config)}</pre>' in page
    assert "<code>ppo_clip</code>" in page  # the headline settings table


def test_report_out_option(runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(runs["dr"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "<h1>dr_grpo</h1>" in out.read_text()


def test_sample_steps_spread_over_the_run():
    assert pick_sample_steps([1, 1, 2, 3]) == [1, 2, 3]
    picked = pick_sample_steps(list(range(1, 101)), k=6)
    assert picked[0] == 1 and picked[-1] == 100 and len(picked) == 6


def test_long_curves_are_smoothed_short_ones_not():
    assert smooth_window(19) == 1 and smooth_window(40) == 5 and smooth_window(100) == 11
    assert moving_average([0.0, 0.0, 3.0, 0.0, 0.0], 3) == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_compare_draws_seeds_as_mean_and_std(runs, tmp_path):
    loaded = [load_run(runs[k]) for k in ("grpo0", "grpo1", "dr")]
    groups = group_runs(loaded)
    assert list(groups) == ["grpo", "dr_grpo"] and len(groups["grpo"]) == 2
    (band,) = group_lines("grpo", groups["grpo"], "reward/mean", "#000")
    a, b = ([r["reward/mean"] for r in _rows(runs[k]) if "reward/mean" in r] for k in ("grpo0", "grpo1"))
    assert list(band.steps) == [1.0, 2.0, 3.0]
    assert band.values == pytest.approx([(x + y) / 2 for x, y in zip(a, b)])
    sd = [statistics.stdev([x, y]) for x, y in zip(a, b)]
    assert band.band[1] == pytest.approx([m + d for m, d in zip(band.values, sd)])
    assert "mean ± std of 2 runs (seeds 0, 1)" in band.label
    (single,) = group_lines("dr_grpo", groups["dr_grpo"], "reward/mean", "#000")
    assert single.band is None and single.label == "dr_grpo (dr-grpo)"

    out = compare_runs([runs["grpo0"], runs["grpo1"], runs["dr"]], out=tmp_path / "cmp.png")
    img = mpimg.imread(out)
    assert img.shape[0] > 300 and img.shape[1] > 600 and img[..., :3].std() > 0.02


def test_compare_html_page(runs, tmp_path, capsys):
    out = tmp_path / "cmp.html"
    argv = ["compare", str(runs["grpo0"]), str(runs["grpo1"]), str(runs["dr"]),
            "--metric", "val/arith/acc", "--metric", "actor/entropy", "--out", str(out)]
    assert main(argv) == 0
    page = out.read_text()
    assert len(PNG_URI.findall(page)) == 1 and not re.search(r"https?://", page)
    last = [r["actor/entropy"] for r in _rows(runs["dr"]) if "actor/entropy" in r][-1]
    assert f'<td class="n">{last:.4g}</td>' in page
    assert "val/arith/acc (last)" in page and "actor/entropy (last)" in page


def _fails(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 and an ``error:`` line; return stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    return err


def test_compare_errors(runs, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert f"{missing}: no such run directory" in _fails(capsys, ["compare", str(runs["grpo0"]), str(missing)])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: no metrics.jsonl" in _fails(capsys, ["compare", str(empty)])
    err = _fails(capsys, ["compare", str(runs["grpo0"]), "--metric", "reward/meen", "--out", str(tmp_path / "x.png")])
    assert "'reward/meen'" in err and "did you mean 'reward/mean'?" in err and str(runs["grpo0"]) in err
    assert not (tmp_path / "x.png").exists()
    err = _fails(capsys, ["compare", str(runs["grpo0"]), "--out", str(tmp_path / "x.jpg")])
    assert "x.jpg" in err and ".png" in err
    assert "given twice" in _fails(capsys, ["compare", str(runs["grpo0"]), str(runs["grpo0"])])


def test_report_errors(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert f"{missing}: no such run directory" in _fails(capsys, ["report", str(missing)])
    assert f"{tmp_path}: no metrics.jsonl" in _fails(capsys, ["report", str(tmp_path)])
    (tmp_path / "metrics.jsonl").write_text("")
    assert "no metric rows" in _fails(capsys, ["report", str(tmp_path)])


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                   "(apt-get install chromium; .ci/run installs it)")
def test_report_renders_in_a_headless_browser(report, tmp_path):
    path, _ = report
    shot, profile = tmp_path / "shot.png", tmp_path / "profile"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,2000", path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True)  # bounded work: --screenshot exits once rendered
    assert shot.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (2000, 1280)
    assert img.std() > 0.05  # not a blank page
    dark = (img.mean(axis=2) < 0.5).mean()
    assert 0.005 < dark < 0.5  # text and curves, not an error page or a black frame
    shutil.rmtree(profile, ignore_errors=True)
