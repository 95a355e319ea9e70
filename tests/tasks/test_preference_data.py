"""Preference rows: the three kinds, chat prompts, conversions, and bad rows named by file and line (or skipped
and counted)."""

import json

import pytest

from rlfold.core.errors import DataError
from rlfold.tasks.preference_data import (PreferenceColumns, as_kind, load_preferences, parse_rows)


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_pairs_lists_and_unpaired_rows_are_detected_and_parsed(tmp_path):
    pairs = load_preferences(_write(tmp_path / "p.jsonl", [{"prompt": "1+1=", "chosen": "2", "rejected": "3",
                                                             "margin": 0.5, "source": "x"}]))
    assert pairs.kind == "pairs"
    ex = pairs.examples[0]
    assert (ex.prompt.text, ex.responses, ex.scores, ex.margin, ex.meta) == ("1+1=", ["2", "3"], [1.0, 0.0], 0.5,
                                                                             {"source": "x"})
    assert ex.where.endswith("p.jsonl:1")
    lists = load_preferences(_write(tmp_path / "l.jsonl", [{"prompt": "a", "responses": ["x", "y", "z"],
                                                            "scores": [0.5, 1, 0]}]))
    assert lists.kind == "lists" and lists.examples[0].scores == [0.5, 1.0, 0.0]
    unpaired = load_preferences(_write(tmp_path / "u.jsonl", [{"prompt": "a", "completion": "x", "label": True},
                                                              {"prompt": "b", "completion": "y", "label": False}]))
    assert unpaired.kind == "unpaired" and [e.scores for e in unpaired.examples] == [[1.0], [0.0]]
    assert pairs.source.rows == 1 and len(pairs.source.sha256) == 64


def test_chat_prompts_and_assistant_message_completions(tmp_path):
    row = {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2="}],
           "chosen": [{"role": "assistant", "content": "4"}], "rejected": "5"}
    ex = load_preferences(_write(tmp_path / "c.jsonl", [row])).examples[0]
    assert ex.prompt.text == "2+2=" and ex.prompt.meta["messages"][0]["role"] == "system"
    assert ex.responses == ["4", "5"]


def test_custom_column_names(tmp_path):
    cols = PreferenceColumns(prompt="q", chosen="good", rejected="bad")
    data = load_preferences(_write(tmp_path / "p.jsonl", [{"q": "x", "good": "1", "bad": "2"}]), cols=cols)
    assert data.examples[0].responses == ["1", "2"]


@pytest.mark.parametrize("row, words", [
    ({"prompt": "x", "chosen": "a"}, ["p.jsonl:2", "missing field", "'rejected'"]),
    ({"prompt": "x", "chosen": "a", "rejected": "a"}, ["p.jsonl:2", "equals", "bad_rows=skip"]),
    ({"prompt": "x", "chosen": "", "rejected": "b"}, ["p.jsonl:2", "empty completion"]),
    ({"prompt": "x", "chosen": 3, "rejected": "b"}, ["p.jsonl:2", "'chosen' must be a string"]),
    ({"prompt": "x", "chosen": "a", "rejected": "b", "margin": "big"}, ["p.jsonl:2", "'margin' must be a finite"]),
    ({"prompt": ["oops"], "chosen": "a", "rejected": "b"}, ["p.jsonl:2", "message 1"]),
    ({"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, ["p.jsonl:2", "assistant"]),
    ("not json", ["p.jsonl:2", "not valid JSON"]),
])
def test_bad_pair_rows_name_file_and_line(tmp_path, row, words):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "ok", "chosen": "1", "rejected": "2"}, row])
    with pytest.raises(DataError) as err:
        load_preferences(path)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


@pytest.mark.parametrize("row, words", [
    ({"prompt": "x", "responses": ["a"], "scores": [1]}, ["l.jsonl:2", "at least 2 responses"]),
    ({"prompt": "x", "responses": ["a", "b"], "scores": [1]}, ["l.jsonl:2", "2 responses but", "1 scores"]),
    ({"prompt": "x", "responses": ["a", "b"], "scores": [1, 1]}, ["l.jsonl:2", "ranks nothing"]),
    ({"prompt": "x", "responses": ["a", "b"], "scores": [1, None]}, ["l.jsonl:2", "scores[1]"]),
])
def test_bad_list_rows_name_file_and_line(tmp_path, row, words):
    path = _write(tmp_path / "l.jsonl", [{"prompt": "ok", "responses": ["1", "2"], "scores": [1, 0]}, row])
    with pytest.raises(DataError) as err:
        load_preferences(path)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_unpaired_label_must_be_boolean(tmp_path):
    path = _write(tmp_path / "u.jsonl", [{"prompt": "x", "completion": "a", "label": "yes"}])
    with pytest.raises(DataError, match=r"u.jsonl:1: field 'label' must be true"):
        load_preferences(path)


def test_skip_counts_each_reason(tmp_path):
    rows = [{"prompt": "a", "chosen": "1", "rejected": "2"}, {"prompt": "b", "chosen": "1", "rejected": "1"},
            {"prompt": "c", "chosen": "", "rejected": "1"}, {"prompt": "d", "chosen": "1", "rejected": "1"}]
    data = load_preferences(_write(tmp_path / "p.jsonl", rows), bad_rows="skip")
    assert len(data.examples) == 1
    assert dict(data.skipped) == {"chosen equals rejected": 2, "empty completion": 1}
    assert data.skip_report() == "3 rows (chosen equals rejected: 2, empty completion: 1)"
    assert data.source.rows == 4


def test_a_dataset_of_only_bad_rows_and_an_unknown_shape_are_errors(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "b", "chosen": "1", "rejected": "1"}])
    with pytest.raises(DataError, match="no usable preference rows; skipped 1"):
        load_preferences(path, bad_rows="skip")
    with pytest.raises(DataError, match=r"x.jsonl:1: not a preference row .*pairs: 'prompt', 'chosen', 'rejected'"):
        load_preferences(_write(tmp_path / "x.jsonl", [{"prompt": "a", "answer": "b"}]))
    with pytest.raises(DataError, match="does not exist"):
        load_preferences(tmp_path / "missing.jsonl")


def test_parquet_and_save_to_disk_read_like_jsonl(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "a", "chosen": "1", "rejected": "2"}, {"prompt": "b", "chosen": "3", "rejected": "3"}]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.save_to_disk(str(tmp_path / "disk"))
    for path in (tmp_path / "p.parquet", tmp_path / "disk"):
        with pytest.raises(DataError, match=r": row 2: 'chosen' equals 'rejected'"):
            load_preferences(path)
        assert len(load_preferences(path, bad_rows="skip").examples) == 1


def test_conversions_between_kinds():
    lists = parse_rows([("f:1", {"prompt": "a", "responses": ["x", "y", "z"], "scores": [0.5, 1, 0]})])
    pairs = as_kind(lists, "pairs")
    assert pairs.examples[0].responses == ["y", "z"] and pairs.examples[0].scores == [1.0, 0.0]
    unpaired = as_kind(pairs, "unpaired")
    assert [(e.responses, e.scores) for e in unpaired.examples] == [(["y"], [1.0]), (["z"], [0.0])]
    assert as_kind(pairs, "lists").examples[0].responses == ["y", "z"]
    with pytest.raises(DataError, match="cannot be used as lists"):
        as_kind(unpaired, "lists")
