"""``rlfold eval``: --size caps --data too, the output names the task and the data file, bad counts are errors."""

from __future__ import annotations

import pytest

from rlfold.cli import main

ROWS = "".join(f'{{"prompt": "{a}+{a}=", "answer": "{2 * a}"}}\n' for a in range(1, 6))


def test_size_applies_to_data_and_the_output_names_task_and_file(tmp_path, capsys):
    data = tmp_path / "held.jsonl"
    data.write_text(ROWS)
    assert main(["eval", "--model", "tiny-arith", "--data", str(data), "--size", "2", "--k", "1"]) == 0
    out = capsys.readouterr().out
    assert f"on task arith, prompts of {data} (2 held-out prompts, reward exact_match)" in out
    assert main(["eval", "--model", "tiny-arith", "--data", str(data), "--k", "1"]) == 0  # no --size: every row
    assert "(5 held-out prompts" in capsys.readouterr().out


def test_the_output_names_the_task_evaluated(capsys):
    assert main(["eval", "--model", "tiny-verbose-arith", "--task", "verbose_arith", "--size", "2", "--k", "1",
                 "--max-new-tokens", "24"]) == 0
    assert "on task verbose_arith (2 held-out prompts, reward final_answer)" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--k", "--size", "--max-new-tokens"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_counts_below_one_are_clean_errors(capsys, flag, value):
    assert main(["eval", "--model", "tiny-arith", "--size", "4", "--k", "1", flag, value]) == 2  # the last one wins
    err = capsys.readouterr().err
    assert err.strip() == f"error: {flag} must be at least 1, got {value}"
