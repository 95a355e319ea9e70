"""``rlfold data audit``: the cross-fitted ensemble finds planted label flips; the report a person reads;
``rlfold data synth``; bad input named by file and line, without a traceback."""

from __future__ import annotations

import json
import math

import pytest

from rlfold.cli import main
from rlfold.reporting.audit import AuditReport, AuditRow, AuditSettings, render_markdown


def _row(i: int, mean: float, flagged: bool, planted: bool | None) -> AuditRow:
    return AuditRow(where=f"d.jsonl:{i}", prompt=f"{i}+1=", chosen="a|b\nc", rejected="x" * 80, mean=mean, std=0.5,
                    against=0.5, flagged=flagged, planted=planted)


def test_report_lists_counts_rule_figures_and_the_lowest_strength_first():
    rows = [_row(1, 2.0, False, False), _row(2, -3.0, True, True), _row(3, -0.5, True, False),
            _row(4, 1.0, False, True)]
    rep = AuditReport(path="d.jsonl", settings=AuditSettings(top=3), rule="strength mu < 0", rows=rows)
    fig = rep.planted_figures()
    assert fig == {"planted": 2, "clean": 2, "found": 1, "false_positives": 1, "recall": 0.5,
                   "false_positive_rate": 0.5}
    text = render_markdown(rep)
    assert "flagged: 2 of 4 pairs (50.0%), rule: strength mu < 0" in text
    assert "recall 50.0%" in text and "false-positive rate 50.0%" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "d.jsonl" in line]
    assert [t.split(" | ")[1] for t in table] == ["d.jsonl:2", "d.jsonl:3", "d.jsonl:4"]  # top 3, lowest first
    assert "-3.000 ± 0.500" in table[0] and "a\\|b\\nc" in table[0] and "…" in table[0]
    assert json.loads(json.dumps(rep.as_dict()))["flagged"] == 2


def test_no_planted_column_no_figures():
    rep = AuditReport(path="d", settings=AuditSettings(), rule="r", rows=[_row(1, 1.0, False, None)])
    assert rep.planted_figures() is None
    assert "recall" not in render_markdown(rep)


def _err(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    return err


def test_audit_bad_input_names_file_and_line(tmp_path, capsys):
    assert f"{tmp_path}/none.jsonl" in _err(capsys, ["data", "audit", str(tmp_path / "none.jsonl")])
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n{"prompt": "2+2=", "chosen": "4"}\n')
    err = _err(capsys, ["data", "audit", str(bad)])
    assert f"{bad}:2" in err and "'rejected'" in err
    same = tmp_path / "same.jsonl"
    same.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "2"}\n')
    err = _err(capsys, ["data", "audit", str(same)])
    assert f"{same}:1" in err and "chosen" in err
    unpaired = tmp_path / "kto.jsonl"
    unpaired.write_text('{"prompt": "1+1=", "completion": "2", "label": true}\n')
    assert "pairs or ranked lists" in _err(capsys, ["data", "audit", str(unpaired)])
    long = tmp_path / "long.jsonl"
    long.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n'
                    + json.dumps({"prompt": "1+" * 100 + "1=", "chosen": "101", "rejected": "1"}) + "\n")
    err = _err(capsys, ["data", "audit", str(long)])
    assert f"{long}:2" in err and "context" in err and "--bad-rows skip" in err
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n')
    assert "--folds" in _err(capsys, ["data", "audit", str(good), "--folds", "1"])
    assert "--fraction" in _err(capsys, ["data", "audit", str(good), "--fraction", "1.5"])
    err = _err(capsys, ["data", "audit", str(good), "--head", "sentense"])
    assert "--head" in err and "'sentence'" in err
    assert "lower --folds" in _err(capsys, ["data", "audit", str(good)])  # one prompt cannot fill 2 folds
    assert f"{tmp_path}/no/r.md" in _err(capsys, ["data", "audit", str(good), "--out", str(tmp_path / "no/r.md")])


def test_synth_bad_input(tmp_path, capsys):
    out = str(tmp_path / "s.jsonl")
    assert "--samples" in _err(capsys, ["data", "synth", "--out", out, "--samples", "1"])
    assert "--flip" in _err(capsys, ["data", "synth", "--out", out, "--flip", "1.2"])
    assert "--kind pairs" in _err(capsys, ["data", "synth", "--out", out, "--kind", "lists", "--flip", "0.2"])
    assert f"{tmp_path}/no" in _err(capsys, ["data", "synth", "--out", str(tmp_path / "no" / "s.jsonl")])
    assert "tiny-arith" in _err(capsys, ["data", "synth", "--out", out, "--model", "tiny-arth"])


def test_synth_writes_the_dataset_with_its_flipped_column(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert main(["data", "synth", "--out", str(out), "--prompts", "60", "--flip", "0.3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all({"prompt", "chosen", "rejected", "flipped"} <= r.keys() for r in rows)
    flipped = [r for r in rows if r["flipped"]]
    assert flipped and all(r["chosen_score"] < r["rejected_score"] for r in flipped)
    assert all(r["chosen_score"] > r["rejected_score"] for r in rows if not r["flipped"])
    assert f"{len(flipped)} pairs flipped" in capsys.readouterr().out
    lists = tmp_path / "l.jsonl"
    assert main(["data", "synth", "--out", str(lists), "--prompts", "20", "--kind", "lists", "--samples", "6"]) == 0
    assert all(len(json.loads(line)["responses"]) >= 2 for line in lists.read_text().splitlines())


@pytest.mark.slow
def test_audit_finds_planted_flips(tmp_path, capsys):
    data = tmp_path / "flipped.jsonl"
    assert main(["data", "synth", "--out", str(data), "--prompts", "900", "--flip", "0.2"]) == 0
    report, js = tmp_path / "audit.md", tmp_path / "audit.json"
    assert main(["data", "audit", str(data), "--members", "1", "--folds", "2", "--steps", "150", "--batch", "32",
                 "--lr", "2e-4", "--no-progress", "--out", str(report), "--json", str(js), "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "most suspicious pairs" in out and report.read_text() in out
    rep = json.loads(js.read_text())
    fig = rep["planted"]
    assert fig["planted"] > 50
    # this small ensemble (2 models of 150 steps on ~600 pairs) measured recall ~0.8 at a false-positive rate
    # ~0.15; the bench's larger ensemble: docs/reward_models.md
    assert fig["recall"] >= 0.6 and fig["false_positive_rate"] <= 0.3, fig
    top = sorted(rep["rows"], key=lambda r: r["mean"])[:5]
    assert sum(r["planted"] for r in top) >= 3  # the most suspicious pairs are mostly planted flips


def test_audit_members_can_use_the_sentence_head(tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    assert main(["data", "synth", "--out", str(data), "--prompts", "60", "--flip", "0.2"]) == 0
    js = tmp_path / "a.json"
    assert main(["data", "audit", str(data), "--head", "sentence", "--members", "1", "--steps", "2", "--batch", "8",
                 "--no-progress", "--json", str(js)]) == 0
    assert "tiny-arith, sentence head" in capsys.readouterr().out
    rep = json.loads(js.read_text())
    assert rep["settings"]["head"] == "sentence"
    assert all(math.isfinite(r["mean"]) for r in rep["rows"]) and len({r["mean"] for r in rep["rows"]}) > 1
