"""The search_qa task: a fixed corpus, held-out entities disjoint from training, oracle labels, and the base."""

from __future__ import annotations

import json
import re

import pytest

from rlfold.core.errors import DataError
from rlfold.models.loading import ASSETS, load_model_and_tokenizer, resolve_model_path, shipped_models
from rlfold.tasks import TASKS
from rlfold.tasks import knowledge as kn
from rlfold.models.tiny import CHARACTERS

QUESTION = re.compile(r"Where does ([A-Za-z]+) live\?\n")
MEMORY = re.compile(r"What is (\d)\+(\d)\?\n")


def _task(**kw):
    return TASKS.get("search_qa")(**kw)


def _name(text: str) -> str:
    m = QUESTION.fullmatch(text)
    assert m, text
    return m.group(1)


def test_entities_are_unique_pronounceable_letters():
    ents = kn.entities()
    names = [n for n, _ in ents]
    values = kn.attribute_values()
    assert len(names) == kn.NUM_ENTITIES == len(set(names))
    assert len(values) == kn.NUM_VALUES == len(set(values))
    assert all(n.isalpha() and n.isascii() and 5 <= len(n) <= 8 and n[0].isupper() for n in names)
    assert all(v.isalpha() and v.isascii() for v in values) and not set(names) & set(values)
    assert {v for _, v in ents} <= set(values)


def test_generation_is_deterministic_and_independent_of_the_run_seed():
    a, b, c = _task(seed=0), _task(seed=0), _task(seed=1)
    assert a.train == b.train and a.held_out == b.held_out
    assert a.held_out == c.held_out and a.train != c.train  # the seed orders training only
    know = lambda t: sorted(p.text for p in t.train if p.meta["needs_search"])  # noqa: E731
    assert know(a) == know(c) and len(a.train) == len(c.train)
    assert kn.corpus_rows() == kn.corpus_rows()


def test_held_out_entities_are_disjoint_from_train():
    task = _task()
    train_names = {_name(p.text) for p in task.train if p.meta["kind"] == "knowledge"}
    held_names = {_name(p.text) for p in task.held_out if p.meta["kind"] == "knowledge"}
    assert held_names and train_names and not train_names & held_names
    train_ents, held_ents = kn.split_entities()
    assert train_names == {n for n, _ in train_ents}  # train_size 0: every train entity
    assert held_names <= {n for n, _ in held_ents}


def test_both_kinds_with_oracle_labels_and_answers():
    task = _task()
    assert task.name == "search_qa" and task.rewards == ["search_em"]
    facts = dict(kn.entities())
    for p in task.train + task.held_out:
        if p.meta == {"kind": "knowledge", "needs_search": True}:
            assert p.answer == facts[_name(p.text)]
        else:
            assert p.meta == {"kind": "memory", "needs_search": False}
            a, b = map(int, MEMORY.fullmatch(p.text).groups())
            assert p.answer == str(a + b)
        assert set(p.text + p.answer) <= set(CHARACTERS)  # the char tokenizer reads every character
    kinds = [p.meta["kind"] for p in task.held_out]
    assert len(task.held_out) == 200 and kinds.count("memory") == 100
    assert "memory" in kinds[:10] and "knowledge" in kinds[:10]  # mixed, so a capped eval sees both
    assert sum(p.meta["kind"] == "memory" for p in task.train) == sum(p.meta["kind"] == "knowledge" for p in task.train)


def test_options_memory_fraction_and_sizes():
    task = _task(train_size=100, memory_fraction=0.2, held_out_size=50)
    assert len(task.train) == 100 and sum(p.meta["kind"] == "memory" for p in task.train) == 20
    assert len(task.held_out) == 50 and sum(p.meta["kind"] == "memory" for p in task.held_out) == 10
    assert all(p.meta["kind"] == "knowledge" for p in _task(memory_fraction=0.0).train)
    with pytest.raises(DataError, match="memory_fraction"):
        _task(memory_fraction=1.5)


def test_every_knowledge_answer_is_in_its_entity_document():
    docs = {r["title"]: r for r in kn.corpus_rows()}
    task = _task()
    for p in task.train + task.held_out:
        if p.meta["needs_search"]:
            doc = docs[_name(p.text)]
            assert p.answer in doc["text"].split(" ")[-1] and doc["text"] == kn.fact(doc["title"], p.answer)


def test_shipped_corpus_equals_the_generator():
    assert kn.CORPUS_PATH == ASSETS / "search-corpus.jsonl"
    text = kn.CORPUS_PATH.read_text(encoding="utf-8")
    assert text == kn.corpus_jsonl()
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows == kn.corpus_rows() and len(rows) == kn.NUM_ENTITIES
    assert len({r["id"] for r in rows}) == len(rows)


def test_shipped_tiny_search_loads():
    assert "tiny-search" in shipped_models()
    assert resolve_model_path("tiny-search") == ASSETS / "tiny-search"
    model, tok = load_model_and_tokenizer("tiny-search")
    assert model.config.max_position_embeddings == 256
    text = "Where does Zorvak live?\n<search> Zorvak </search>"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_default_reward_scores_a_search_then_copy_episode():
    from rlfold.envs.tool_formats import Doc, SearchR1Format
    from rlfold.rewards import REWARDS

    task = _task()
    reward = REWARDS.get(task.rewards[0])
    p = next(q for q in task.held_out if q.meta["needs_search"])
    doc = next(r for r in kn.corpus_rows() if r["title"] == _name(p.text))
    obs = SearchR1Format().observation("search", [Doc(doc["title"], doc["text"])])
    good = f"<search> {doc['title']} </search>{obs}<answer> {p.answer} </answer>"
    wrong = next(v for v in kn.attribute_values() if v != p.answer)
    assert reward([p, p, p], [good, f"<answer> {wrong} </answer>", p.answer], ["stop"] * 3) == [1.0, 0.0, 0.0]
