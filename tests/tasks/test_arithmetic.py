"""Arithmetic task (seeded, correct, disjoint splits) and the JSONL loader's row-level errors."""

from __future__ import annotations

import json

import pytest

from rlfold.core.errors import DataError
from rlfold.tasks import TASKS, load_jsonl_prompts
from rlfold.tasks.arithmetic import (
    LEVELS,
    all_problems,
    format_prompt,
    is_held_out,
    make_split,
    no_carry_sum,
)

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b}


def _check_item(p) -> None:
    """The prompt text parses back to its operands, and the answer is Python's arithmetic."""
    a, b, op = p.meta["a"], p.meta["b"], p.meta["op"]
    assert p.text == f"{a}{op}{b}="
    assert int(p.answer) == OPS[op](a, b)
    assert p.answer == str(eval(p.text[:-1]))


# ----- generation ---------------------------------------------------------------------------------


def test_seeded_and_reproducible():
    t1 = TASKS.get("arith")(levels=[2], train_size=300, held_out_size=50, seed=3)
    t2 = TASKS.get("arith")(levels=[2], train_size=300, held_out_size=50, seed=3)
    t3 = TASKS.get("arith")(levels=[2], train_size=300, held_out_size=50, seed=4)
    assert [p.text for p in t1.train] == [p.text for p in t2.train]
    assert [p.text for p in t1.held_out] == [p.text for p in t2.held_out]
    assert [p.text for p in t1.train] != [p.text for p in t3.train]


def test_held_out_split_does_not_depend_on_the_seed():
    # The split is a hash of the prompt text: a held-out prompt is held out under every seed.
    for seed in range(3):
        t = TASKS.get("arith")(levels=[2], held_out_size=100, seed=seed)
        assert all(is_held_out(p.text, 0.1) for p in t.held_out)
        assert not any(is_held_out(p.text, 0.1) for p in t.train[:500])


@pytest.mark.parametrize("levels", [[1], [2], [3], [1, 2, 3]])
def test_splits_never_overlap_and_answers_are_correct(levels):
    t = TASKS.get("arith")(levels=levels, held_out_size=10_000, seed=0)
    train, held = {p.text for p in t.train}, {p.text for p in t.held_out}
    assert train and held
    assert not train & held
    assert len(train) == len(t.train) and len(held) == len(t.held_out)  # distinct problems
    # together the two splits are exactly every problem of the levels
    everything = {format_prompt(*p) for lv in levels for p in all_problems(lv)}
    assert train | held == everything
    for p in [*t.train, *t.held_out]:
        _check_item(p)


def test_level_4_splits_never_overlap_and_answers_are_correct():
    # 810,000 problems: draw samples rather than whole splits, to stay fast.
    t = TASKS.get("arith")(levels=[4], train_size=3000, held_out_size=3000, seed=0)
    train, held = {p.text for p in t.train}, {p.text for p in t.held_out}
    assert len(train) == len(held) == 3000 and not train & held
    for p in [*t.train, *t.held_out]:
        _check_item(p)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_each_level_has_its_operand_range_and_operator(level):
    _, (lo, hi), op = LEVELS[level]
    items = make_split([level], held_out=False, held_out_fraction=0.1, size=500, seed=0)
    n_train = 90 if level == 1 else 500  # level 1 has 100 problems, about 10 of them held out
    assert abs(len(items) - n_train) <= 5 if level == 1 else len(items) == 500
    for p in items:
        assert p.meta["op"] == op
        assert lo <= p.meta["a"] <= hi and lo <= p.meta["b"] <= hi
        if op == "-":
            assert int(p.answer) >= 0
        _check_item(p)


def test_level_sizes():
    assert len(all_problems(1)) == 100
    assert len(all_problems(2)) == 90 * 90
    assert len(all_problems(3)) == 90 * 91 // 2
    assert len(all_problems(4)) == 900 * 900


def test_held_out_fraction_is_respected():
    n_held = sum(is_held_out(format_prompt(*p), 0.1) for p in all_problems(2))
    assert 0.08 < n_held / 8100 < 0.12


def test_duplicate_levels_do_not_duplicate_problems():
    items = make_split([2, 2], held_out=True, held_out_fraction=0.1, size=0, seed=0)
    assert len({p.text for p in items}) == len(items)


def test_sizes():
    t = TASKS.get("arith")(levels=[2], train_size=37, held_out_size=20, seed=0)
    assert len(t.train) == 37 and len(t.held_out) == 20


def test_unknown_level_is_named():
    with pytest.raises(DataError, match=r"unknown difficulty level 7; known levels: \[1, 2, 3, 4\]"):
        TASKS.get("arith")(levels=[7], held_out_size=20)


@pytest.mark.parametrize("a, b, expected", [(58, 67, 15), (23, 58, 71), (12, 34, 46), (9, 1, 0), (99, 1, 90),
                                            (0, 0, 0), (505, 505, 0), (7, 0, 7)])
def test_no_carry_sum(a, b, expected):
    assert no_carry_sum(a, b) == expected


def test_no_carry_sum_equals_the_sum_when_no_column_carries():
    for a in range(10, 100):
        for b in range(10, 100):
            if a % 10 + b % 10 < 10 and a // 10 + b // 10 < 10:
                assert no_carry_sum(a, b) == a + b


# ----- JSONL loader -------------------------------------------------------------------------------


def _write(tmp_path, text: str | bytes, name: str = "data.jsonl"):
    f = tmp_path / name
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    return f


def test_loader_reads_rows_and_keeps_extra_fields_as_meta(tmp_path):
    f = _write(tmp_path, '{"prompt": "1+1=", "answer": 2, "level": 1}\n\n{"prompt": "2+2=", "answer": "4"}\n')
    rows = load_jsonl_prompts(f)
    assert [(p.text, p.answer, p.meta) for p in rows] == [("1+1=", "2", {"level": 1}), ("2+2=", "4", {})]


def test_loader_accepts_a_byte_order_mark(tmp_path):
    f = _write(tmp_path, b'\xef\xbb\xbf{"prompt": "1+1=", "answer": "2"}\n')
    assert load_jsonl_prompts(f)[0].text == "1+1="


def test_missing_field_names_file_line_and_field(tmp_path):
    f = _write(tmp_path, '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n')
    with pytest.raises(DataError) as info:
        load_jsonl_prompts(f)
    assert str(info.value) == f"{f}:2: row is missing field(s) 'answer' (has 'prompt')"


def test_misspelt_field(tmp_path):
    f = _write(tmp_path, '{"question": "1+1=", "answer": "2"}\n')
    with pytest.raises(DataError, match=r":1: row is missing field\(s\) 'prompt' \(has 'question', 'answer'\)"):
        load_jsonl_prompts(f)


def test_invalid_json_names_file_and_line(tmp_path):
    f = _write(tmp_path, '{"prompt": "1+1=", "answer": "2"}\n\n{"prompt": "2+2=", "answer": 4,}\n')
    with pytest.raises(DataError) as info:
        load_jsonl_prompts(f)
    msg = str(info.value)
    assert msg.startswith(f"{f}:3: not valid JSON (") and "column" in msg


@pytest.mark.parametrize("row, kind", [("[1, 2]", "list"), ('"text"', "str"), ("3", "int"), ("null", "NoneType")])
def test_row_that_is_not_an_object(tmp_path, row, kind):
    f = _write(tmp_path, row + "\n")
    with pytest.raises(DataError) as info:
        load_jsonl_prompts(f)
    assert str(info.value).startswith(f"{f}:1: expected a JSON object") and f"got {kind}" in str(info.value)


@pytest.mark.parametrize("value", [None, [1], {"x": 1}, True])
def test_field_of_the_wrong_type(tmp_path, value):
    f = _write(tmp_path, json.dumps({"prompt": "1+1=", "answer": value}) + "\n")
    with pytest.raises(DataError) as info:
        load_jsonl_prompts(f)
    assert str(info.value) == f"{f}:1: field 'answer' must be a string or number, got {json.dumps(value)}"


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    f = _write(tmp_path, text)
    with pytest.raises(DataError, match="is empty"):
        load_jsonl_prompts(f)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope.jsonl does not exist"):
        load_jsonl_prompts(tmp_path / "nope.jsonl")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_jsonl_prompts(tmp_path)


def test_non_utf8_row_names_line(tmp_path):
    f = _write(tmp_path, b'{"prompt": "1+1=", "answer": "2"}\n{"prompt": "\xff", "answer": "2"}\n')
    with pytest.raises(DataError, match=r":2: not UTF-8 text"):
        load_jsonl_prompts(f)


def test_task_files_replace_generated_splits(tmp_path):
    tr = _write(tmp_path, '{"prompt": "1+1=", "answer": "2"}\n', "train.jsonl")
    ho = _write(tmp_path, '{"prompt": "2+2=", "answer": "4"}\n', "held.jsonl")
    t = TASKS.get("arith")(train_file=str(tr), held_out_file=str(ho))
    assert [p.text for p in t.train] == ["1+1="] and [p.text for p in t.held_out] == ["2+2="]


def test_bad_held_out_file_is_reported_through_the_task(tmp_path):
    ho = _write(tmp_path, '{"prompt": "2+2="}\n', "held.jsonl")
    with pytest.raises(DataError, match=r"held.jsonl:1: row is missing field\(s\) 'answer'"):
        TASKS.get("arith")(held_out_file=str(ho), held_out_size=20)
