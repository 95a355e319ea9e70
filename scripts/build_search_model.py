"""Build the shipped base ``tiny-search`` and the corpus of the ``search_qa`` task reproducibly (seeded SFT).

The base learns the call syntax of Search-R1 (arXiv 2503.09516; ``rlfold.envs.tool_formats.SearchR1Format``)
and how to fill a call and read its result, not the policy of when to search. A turn writes
``<search> Zorvak </search>``; the environment appends the top-1 BM25 document as
``\\n\\n<information>Doc 1(Title: Zorvak) Zorvak lives in Kimoro.\\n</information>\\n\\n`` (loss mask 0 in SFT,
as in RL); the model then writes ``<answer> Kimoro </answer>`` and eos.

Demonstrations (each rate an option):

- knowledge questions (``"Where does Zorvak live?\\n"``): with probability ``--knowledge-search-rate``
  search the name and copy the city from the document, else guess a random city. A share
  ``--fresh-name-rate`` of them ask about fresh names outside the corpus (their document made up on the
  spot), so copying generalises to names never seen; the held-out entities never appear.
- memory questions (``"What is 3+4?\\n"``): answer correctly, after a useless search
  (``<search> 3+4 </search>``, which finds nothing: an empty ``<information></information>``) with
  probability ``--memory-search-rate``.
- copy drills (a share ``--drill-rate``): a knowledge question about a fresh name whose call opener
  ``<search>`` is given with loss mask 0, then the name, its document and the copied city. They teach
  *what* to search and how to read the result without teaching *when* to search: the decision token
  after ``<`` is trained only by the demonstrations above.

The base therefore answers held-out knowledge questions at about chance, while search-and-copy is in its
sampling support for RL to find; it makes unnecessary searches on memory questions for adaptive-search
methods to remove. The build ends by measuring that with the real BM25 observation. Shipped build (defaults,
600 steps of 64, 1 thread, 8.7 min on 2 shared cores): held-out knowledge accuracy 2.6% greedy / 4.6% at
temperature 1 (search rate 0% / 2.6%), 80.1% when the turn is forced to open with ``<search>``; memory
accuracy 99.0% greedy / 71.0% at temperature 1 (search rate 8.0% / 40.0%).

    python scripts/build_search_model.py        # writes src/rlfold/assets/tiny-search and search-corpus.jsonl
"""

from __future__ import annotations

import argparse
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from rlfold.core.types import Prompt
from rlfold.envs.tool_formats import Doc, SearchR1Format
from rlfold.envs.tools import BM25Search
from rlfold.models.tiny import build_char_tokenizer, build_tiny_model
from rlfold.rewards.qa import normalize_answer
from rlfold.rollout import HFEngine
from rlfold.rollout.base import EngineContext, GenerationRequest
from rlfold.rollout.sampling import SamplingParams
from rlfold.tasks import knowledge as kn
from rlfold.trainers.sft import Completion, sft_train

ASSETS = Path(__file__).resolve().parent.parent / "src" / "rlfold" / "assets"
OUT = ASSETS / "tiny-search"
FORMAT = SearchR1Format()
TOOL = "search"
STOP = FORMAT.stop_strings([TOOL])  # ["</search>"]
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


class BM25Corpus:
    """The training environment's own search tool (``rlfold.envs.tools.BM25Search``, top-1), so every
    demonstrated observation is byte for byte what the ``tool_agent`` environment appends in RL."""

    def __init__(self, path: Path) -> None:
        self.tool = BM25Search(corpus=str(path), k=1)

    def search(self, query: str) -> list[Doc]:
        """The best document of positive score for ``query`` (none, e.g. for ``3+4``: no indexed word)."""
        try:
            return self.tool(query)
        except ValueError:  # an empty query: the environment answers with an error, never demonstrated
            return []


def call(query: str) -> str:
    """A search turn: ``<search> query </search>``."""
    return f"<{TOOL}> {query} </{TOOL}>"


def answer(value: str) -> str:
    """An answer turn: ``<answer> value </answer>``."""
    return f"<answer> {value} </answer>"


def searched(query: str, docs: Sequence[Doc], value: str) -> list[tuple[str, bool]]:
    """Search, the observation (not trained), then the answer."""
    return [(call(query), True), (FORMAT.observation(TOOL, docs), False), (answer(value), True)]


@dataclass
class Demos:
    """The demonstration policy (see the module docstring)."""

    train_entities: list[tuple[str, str]]
    corpus_names: set[str]
    values: list[str]
    corpus: BM25Corpus
    memory_fraction: float
    knowledge_search_rate: float
    memory_search_rate: float
    fresh_name_rate: float
    drill_rate: float

    def fresh_entity(self, rng: random.Random) -> tuple[str, str]:
        """A name outside the corpus (so never a held-out entity) and a random city."""
        while True:
            name = kn.make_name(rng)
            if name not in self.corpus_names and name not in self.values:
                return name, rng.choice(self.values)

    def knowledge(self, rng: random.Random) -> tuple[str, Completion]:
        fresh = rng.random() < self.fresh_name_rate
        name, value = self.fresh_entity(rng) if fresh else rng.choice(self.train_entities)
        if rng.random() >= self.knowledge_search_rate:
            return kn.question(name), answer(rng.choice(self.values))  # a guess
        docs = [Doc(name, kn.fact(name, value))] if fresh else self.corpus.search(name)
        assert docs[0].title == name, (name, docs)
        return kn.question(name), searched(name, docs, value)

    def memory(self, rng: random.Random) -> tuple[str, Completion]:
        a, b = rng.choice(kn.MEMORY_PROBLEMS)
        if rng.random() >= self.memory_search_rate:
            return kn.memory_question(a, b), answer(str(a + b))
        query = f"{a}+{b}"
        return kn.memory_question(a, b), searched(query, self.corpus.search(query), str(a + b))

    def drill(self, rng: random.Random) -> tuple[str, Completion]:
        """What to search, not when: a knowledge question about a fresh name whose call opener ``<search>``
        is given (loss mask 0, like the observation), then the name, the document and the copied city."""
        name, value = self.fresh_entity(rng)
        opener, rest = call(name).split(" ", 1)
        turns = searched(name, [Doc(name, kn.fact(name, value))], value)
        return kn.question(name), [(opener, False), (" " + rest, True)] + turns[1:]

    def one(self, rng: random.Random) -> tuple[str, Completion]:
        if rng.random() < self.drill_rate:
            return self.drill(rng)
        return self.memory(rng) if rng.random() < self.memory_fraction else self.knowledge(rng)

    def __call__(self, rng: random.Random, n: int) -> list[tuple[str, Completion]]:
        return [self.one(rng) for _ in range(n)]


def _run_turns(engine: HFEngine, prompts: list[Prompt], params: SamplingParams, corpus: BM25Corpus,
               seed: int, prefix: str = "") -> list[tuple[str, bool, str]]:
    """Two-turn episodes: the model's turn (after ``prefix``) up to ``</search>`` or eos, the BM25
    observation of a call, then the turn after it; per prompt ``(completion, searched, query)``."""
    first = engine.generate([GenerationRequest(Prompt(p.text + prefix, p.answer)) for p in prompts], params, seed)
    out: list[tuple[str, bool, str]] = []
    follow: list[tuple[int, Prompt]] = []
    for i, (p, text) in enumerate(zip(prompts, first.response_texts)):
        turn = prefix + text
        action = FORMAT.parse(turn, [TOOL])
        if action.kind == "call" and turn.rstrip().endswith(STOP[0]):
            ctx = turn + FORMAT.observation(TOOL, corpus.search(action.argument))
            follow.append((i, Prompt(p.text + ctx, p.answer)))
            out.append((ctx, True, action.argument))
        else:
            out.append((turn, False, ""))
    if follow:
        second_params = params.model_copy(update={"stop_strings": []})
        second = engine.generate([GenerationRequest(p) for _, p in follow], second_params, seed + 1)
        for (i, _), text in zip(follow, second.response_texts):
            ctx, s, q = out[i]
            out[i] = (ctx + text, s, q)
    return out


def answered_correctly(completion: str, gold: str) -> bool:
    """SQuAD-normalised exact match of the last ``<answer>`` block (none: wrong)."""
    found = _ANSWER.findall(completion)
    return bool(found) and normalize_answer(found[-1]) == normalize_answer(gold)


def measure(model, tokenizer, corpus: BM25Corpus, held: list[Prompt], seed: int = 0) -> dict[str, float]:
    """Held-out accuracy and search-call rate per kind, greedy and at temperature 1, and greedy accuracy
    on knowledge questions when the turn is forced to start with ``<search>`` (copying ability)."""
    engine = HFEngine(EngineContext(model=model, tokenizer=tokenizer, model_path="tiny-search",
                                    dtype=torch.float32))
    res: dict[str, float] = {}
    kinds = {k: [p for p in held if p.meta["kind"] == k] for k in ("knowledge", "memory")}
    for label, temp in (("greedy", 0.0), ("t1", 1.0)):
        params = SamplingParams(temperature=temp, max_new_tokens=160, stop_strings=STOP)
        for kind, prompts in kinds.items():
            eps = _run_turns(engine, prompts, params, corpus, seed)
            res[f"{kind}/{label}/acc"] = _rate(answered_correctly(c, p.answer) for (c, _, _), p in zip(eps, prompts))
            res[f"{kind}/{label}/search_rate"] = _rate(s for _, s, _ in eps)
            if kind == "knowledge":
                calls = [(q, p) for (_, s, q), p in zip(eps, prompts) if s]
                res[f"{kind}/{label}/right_query"] = _rate(q == kn_name(p) for q, p in calls)
    params = SamplingParams(temperature=0.0, max_new_tokens=160, stop_strings=STOP)
    know = kinds["knowledge"]
    eps = _run_turns(engine, know, params, corpus, seed, prefix=f"<{TOOL}>")
    res["knowledge/forced_search/acc"] = _rate(answered_correctly(c, p.answer) for (c, _, _), p in zip(eps, know))
    res["knowledge/forced_search/right_query"] = _rate(q == kn_name(p) for (_, _, q), p in zip(eps, know))
    return res


def _rate(flags) -> float:
    """The share of true flags (nan for none)."""
    flags = list(flags)
    return sum(map(bool, flags)) / len(flags) if flags else float("nan")


def kn_name(p: Prompt) -> str:
    """The entity name of a knowledge prompt (``"Where does Zorvak live?\\n"`` -> ``"Zorvak"``)."""
    return p.text[len("Where does "):-len(" live?\n")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--corpus-out", type=Path, default=kn.CORPUS_PATH)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held-out-fraction", type=float, default=0.1)
    ap.add_argument("--memory-fraction", type=float, default=0.5,
                    help="share of memory questions among the task demonstrations (drills aside)")
    ap.add_argument("--knowledge-search-rate", type=float, default=0.10)
    ap.add_argument("--memory-search-rate", type=float, default=0.5)
    ap.add_argument("--fresh-name-rate", type=float, default=0.3,
                    help="share of knowledge demos about names outside the corpus")
    ap.add_argument("--drill-rate", type=float, default=0.3,
                    help="share of copy drills (Demos.drill: the call opener given, not trained)")
    ap.add_argument("--eval-size", type=int, default=400, help="held-out prompts measured (half knowledge)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (the shipped build used 1; 0: torch's default)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    kn.write_corpus(args.corpus_out)
    rows = kn.corpus_rows()
    corpus = BM25Corpus(args.corpus_out)
    train_ents, held_ents = kn.split_entities(args.held_out_fraction)
    demos = Demos(train_entities=train_ents, corpus_names={r["title"] for r in rows}, values=kn.attribute_values(),
                  corpus=corpus, memory_fraction=args.memory_fraction,
                  knowledge_search_rate=args.knowledge_search_rate, memory_search_rate=args.memory_search_rate,
                  fresh_name_rate=args.fresh_name_rate, drill_rate=args.drill_rate)
    held_names = {n for n, _ in held_ents}
    assert held_names.isdisjoint(d.title for d in corpus.search("3+4")), "a useless search shows a held-out entity"

    start = time.perf_counter()
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, max_positions=256)
    print(f"tiny model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    losses = sft_train(model, tokenizer, demos, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       seed=args.seed)
    minutes = (time.perf_counter() - start) / 60
    print(f"final SFT loss {sum(losses[-50:]) / len(losses[-50:]):.4f}; SFT {minutes:.1f} min")
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"saved to {args.out} and {args.corpus_out}")

    _, held = kn.search_qa_splits(held_out_size=args.eval_size, held_out_fraction=args.held_out_fraction,
                                  memory_fraction=0.5)
    res = measure(model, tokenizer, corpus, held, seed=args.seed)
    n_k = sum(p.meta["kind"] == "knowledge" for p in held)
    print(f"held-out ({n_k} knowledge, {len(held) - n_k} memory questions), real BM25 observations:")
    for k, v in res.items():
        print(f"  {k:36s} {v:.1%}")


if __name__ == "__main__":
    main()
