"""Synthetic knowledge QA with a search corpus: facts the model cannot know, and a BM25 corpus that has them.

Every entity is a made-up pronounceable name (``"Zorvak"``) living in one of ``NUM_VALUES`` made-up
cities (``"Kimoro"``). A knowledge prompt asks ``"Where does Zorvak live?\\n"``; its answer is only in the
entity's document of the corpus (``"Zorvak lives in Kimoro."``), so a model answers it by searching (the
Search-R1 protocol, arXiv 2503.09516, ``rlfold.envs.tool_formats.SearchR1Format``). A memory prompt
(``"What is 3+4?\\n"``) needs no search. ``Prompt.meta`` carries ``kind`` (``knowledge`` | ``memory``) and
``needs_search``, the oracle label of adaptive-search methods (AdaSearch).

Entities, values and the corpus come from a fixed seed (``CORPUS_SEED``), not the run seed, so the corpus
never changes; the held-out entities are chosen by a hash of their name and never appear in the SFT data
of the shipped base ``tiny-search`` (``scripts/build_search_model.py``). The corpus ships as
``rlfold/assets/search-corpus.jsonl`` (``corpus_jsonl()`` regenerates it byte for byte).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rlfold.core.errors import DataError
from rlfold.core.types import Prompt
from rlfold.tasks.arithmetic import is_held_out
from rlfold.tasks.base import TASKS, Task
from rlfold.tasks.files import files_or_generated
from rlfold.tasks.rows import Columns

CORPUS_SEED = 20_250_312  # entities, values and their facts; independent of the run seed
HELD_OUT_SEED = 20_250_313  # order of the held-out prompts; independent of the run seed
NUM_ENTITIES = 2000
NUM_VALUES = 40
CORPUS_PATH = Path(__file__).resolve().parent.parent / "assets" / "search-corpus.jsonl"

ONSETS = "bdfgklmnprstvz"
VOWELS = "aeiou"
CODAS = "rnkls"
NAME_LENGTHS = (5, 8)  # entity names have 5 to 8 letters


def _syllable(rng: random.Random, coda_prob: float) -> str:
    """Consonant, vowel and (with probability ``coda_prob``) a closing consonant."""
    s = rng.choice(ONSETS) + rng.choice(VOWELS)
    return s + rng.choice(CODAS) if rng.random() < coda_prob else s


def make_name(rng: random.Random, lengths: tuple[int, int] = NAME_LENGTHS) -> str:
    """A capitalised pronounceable name of two or three syllables, ``lengths[0]``..``lengths[1]`` letters."""
    while True:
        name = "".join(_syllable(rng, 0.4) for _ in range(rng.choice((2, 3)))).capitalize()
        if lengths[0] <= len(name) <= lengths[1]:
            return name


def attribute_values(num_values: int = NUM_VALUES) -> list[str]:
    """The made-up city names an entity can live in (distinct, three open syllables: ``"Kimoro"``)."""
    rng = random.Random(CORPUS_SEED + 1)
    seen: dict[str, None] = {}
    while len(seen) < num_values:
        seen["".join(_syllable(rng, 0.0) for _ in range(3)).capitalize()] = None
    return list(seen)


def entities(num_entities: int = NUM_ENTITIES, num_values: int = NUM_VALUES) -> list[tuple[str, str]]:
    """``(name, city)`` of every entity, in corpus order: unique names, none equal to a city."""
    values = attribute_values(num_values)
    rng = random.Random(CORPUS_SEED)
    seen: dict[str, str] = {}
    while len(seen) < num_entities:
        name = make_name(rng)
        if name not in seen and name not in values:
            seen[name] = rng.choice(values)
    return list(seen.items())


def question(name: str) -> str:
    """The knowledge prompt text: ``"Where does Zorvak live?\\n"``."""
    return f"Where does {name} live?\n"


def fact(name: str, value: str) -> str:
    """The document text holding an entity's fact: ``"Zorvak lives in Kimoro."``."""
    return f"{name} lives in {value}."


def memory_question(a: int, b: int) -> str:
    """The memory prompt text: ``"What is 3+4?\\n"``."""
    return f"What is {a}+{b}?\n"


def corpus_rows(num_entities: int = NUM_ENTITIES, num_values: int = NUM_VALUES) -> list[dict[str, str]]:
    """One document per entity: ``{"id", "title", "text"}`` (the shipped corpus with the defaults)."""
    return [{"id": str(i), "title": name, "text": fact(name, value)}
            for i, (name, value) in enumerate(entities(num_entities, num_values))]


def corpus_jsonl(num_entities: int = NUM_ENTITIES, num_values: int = NUM_VALUES) -> str:
    """The corpus as JSONL text, one document a line (what ``CORPUS_PATH`` holds)."""
    return "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in corpus_rows(num_entities, num_values))


def write_corpus(path: str | Path = CORPUS_PATH) -> Path:
    """Write the default corpus to ``path`` (``scripts/build_search_model.py`` regenerates the shipped one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(corpus_jsonl(), encoding="utf-8")
    return path


def split_entities(held_out_fraction: float = 0.1, num_entities: int = NUM_ENTITIES,
                   num_values: int = NUM_VALUES) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Train and held-out entities, chosen by a hash of the name (``arithmetic.is_held_out``)."""
    train, held = [], []
    for e in entities(num_entities, num_values):
        (held if is_held_out(e[0], held_out_fraction) else train).append(e)
    return train, held


def knowledge_prompt(name: str, value: str) -> Prompt:
    """A knowledge question; its answer is only in the entity's document."""
    return Prompt(text=question(name), answer=value, meta={"kind": "knowledge", "needs_search": True})


def memory_prompt(a: int, b: int) -> Prompt:
    """A one-digit addition the model answers from memory."""
    return Prompt(text=memory_question(a, b), answer=str(a + b), meta={"kind": "memory", "needs_search": False})


MEMORY_PROBLEMS = [(a, b) for a in range(10) for b in range(10)]


def _take(pool: list[Any], n: int, rng: random.Random) -> list[Any]:
    """``n`` items of ``pool``: a shuffled copy, repeated (each pass reshuffled) when ``n`` exceeds it."""
    out: list[Any] = []
    while len(out) < n and pool:
        p = list(pool)
        rng.shuffle(p)
        out.extend(p[: n - len(out)])
    return out


def _mixed(know: list[tuple[str, str]], mem: list[tuple[int, int]], rng: random.Random) -> list[Prompt]:
    prompts = [knowledge_prompt(*e) for e in know] + [memory_prompt(*m) for m in mem]
    rng.shuffle(prompts)
    return prompts


def search_qa_splits(train_size: int = 0, held_out_size: int = 200, held_out_fraction: float = 0.1, seed: int = 0,
                     memory_fraction: float = 0.5, num_entities: int = NUM_ENTITIES
                     ) -> tuple[list[Prompt], list[Prompt]]:
    """Train and held-out prompts, a share ``memory_fraction`` of each being memory questions.

    Train (``train_size <= 0``: every train entity once, plus memory questions, repeated, for the share)
    is ordered by ``seed``; the held-out split (its own entities, ``HELD_OUT_SEED`` order) is the same
    for every seed.
    """
    if not 0.0 <= memory_fraction <= 1.0:
        raise DataError(f"search_qa: memory_fraction must be in [0, 1], got {memory_fraction}")
    train_ents, held_ents = split_entities(held_out_fraction, num_entities)
    rng = random.Random(seed)
    if train_size > 0:
        n_mem = round(train_size * memory_fraction)
        n_know = train_size - n_mem
    elif memory_fraction < 1.0:
        n_know = len(train_ents)
        n_mem = round(n_know * memory_fraction / (1.0 - memory_fraction))
    else:
        n_know, n_mem = 0, len(MEMORY_PROBLEMS)
    train = _mixed(_take(train_ents, n_know, rng), _take(MEMORY_PROBLEMS, n_mem, rng), rng)
    hrng = random.Random(HELD_OUT_SEED)
    h_mem = round(held_out_size * memory_fraction)
    h_know = min(held_out_size - h_mem, len(held_ents))
    held = _mixed(_take(held_ents, h_know, hrng), _take(MEMORY_PROBLEMS, h_mem, hrng), hrng)
    return train, held


@TASKS.register("search_qa")
def search_qa_task(
    levels: list[int] | None = None,
    train_size: int = 0,
    held_out_size: int = 200,
    held_out_fraction: float = 0.1,
    seed: int = 0,
    train_file: str | None = None,
    held_out_file: str | None = None,
    columns: Columns | None = None,
    memory_fraction: float = 0.5,
    num_entities: int = NUM_ENTITIES,
) -> Task:
    """Knowledge questions answerable by searching the corpus, mixed with memory questions; reward ``search_em``.

    ``levels`` is not used (the arithmetic tasks' option); ``train_file``/``held_out_file`` replace the
    generated splits as for ``arith``.
    """
    made = search_qa_splits(train_size, held_out_size, held_out_fraction, seed, memory_fraction, num_entities)
    train, held, sources = files_or_generated(train_file, held_out_file, columns or Columns(), lambda: made[0],
                                              lambda: made[1])
    return Task(name="search_qa", train=train, held_out=held, rewards=["search_em"], sources=sources)
