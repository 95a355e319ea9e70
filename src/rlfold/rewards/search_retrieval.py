"""DeepRetrieval (arXiv 2503.00223): the reward of a *query* the model writes, from what that query retrieves.

The response is ``<think>...</think><answer>{"query": "..."}</answer>``; the query is run through a
retriever (by default BM25 with ``bm25s`` over a local JSONL corpus of ``{"id", "title", "text"}``
rows, built once per corpus file and cached) and scored in one of three tiers against the dataset
column ``targets``:

- ``tier="recall"`` (literature search): ``targets`` = the relevant doc ids; recall of the top ``k``;
- ``tier="rank"`` (evidence-seeking QA): ``targets`` = the answer spans; the 1-based rank of the first
  retrieved doc whose title or text contains a span;
- ``tier="ndcg"`` (classic IR): ``targets`` = ``{doc_id: grade}`` (or a list of ids, grade 1); NDCG@k.
"""

from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Sequence

from pydantic import Field

from rlfold.core.errors import DataError
from rlfold.core.registry import needs
from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS
from rlfold.rewards.qa import normalize_answer

__all__ = ["BM25Corpus", "deepretrieval", "deepretrieval_format_ok", "extract_query", "ndcg_at_k",
           "rank_score", "recall_score"]

# A retriever maps (query, k) to the ranked docs, each a mapping with "id" and "text" (and maybe "title").
Retriever = Callable[[str, int], Sequence[Mapping[str, Any]]]

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_ASSISTANT = re.compile(r"<\|im_start\|>assistant|Assistant:")
FORMAT_ERROR = -4.0  # the answer score of an unreadable query and the total of a bad format (literature tiers)


def _response_part(text: str) -> str:
    """The text after the last "Assistant:" / "<|im_start|>assistant" marker, or all of it."""
    parts = _ASSISTANT.split(text)
    return parts[-1]


def deepretrieval_format_ok(text: str) -> bool:
    """Each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` occurs exactly once and in that order
    (checked after an "Assistant:" / "<|im_start|>assistant" marker when the text has one)."""
    body = _response_part(text)
    if any(body.count(t) != 1 for t in _TAGS):
        return False
    pos = [body.index(t) for t in _TAGS]
    return pos == sorted(pos)


def extract_query(text: str) -> str | None:
    """The ``"query"`` string of the JSON object inside ``<answer>``; None when it is not such JSON."""
    body = _response_part(text)
    m = re.search(r"<answer>(.*?)</answer>", body, re.DOTALL)
    if m is None:
        return None
    try:
        obj = json.loads(m.group(1).strip())
    except json.JSONDecodeError:
        return None
    q = obj.get("query") if isinstance(obj, dict) else None
    return q if isinstance(q, str) else None


# ----- tiers -------------------------------------------------------------------------------------

_RECALL_TIERS = ((0.7, 5.0), (0.5, 4.0), (0.4, 3.0), (0.3, 1.0), (0.1, 0.5), (0.05, 0.1))
_RANK_TIERS = ((5, 5.0), (20, 4.0), (50, 2.0), (100, 1.0), (1000, 0.5), (3000, 0.1))
_LOWEST = -3.5


def recall_score(recall: float) -> float:
    """DeepRetrieval's literature-search answer score: >= .7 -> 5, .5 -> 4, .4 -> 3, .3 -> 1, .1 -> .5,
    .05 -> .1, else -3.5."""
    return next((s for t, s in _RECALL_TIERS if recall >= t), _LOWEST)


def rank_score(rank: float) -> float:
    """DeepRetrieval's evidence-seeking answer score of the first answer-bearing rank (inf: none):
    <= 5 -> 5, 20 -> 4, 50 -> 2, 100 -> 1, 1000 -> .5, 3000 -> .1, else -3.5."""
    return next((s for t, s in _RANK_TIERS if rank <= t), _LOWEST)


def ndcg_at_k(ranked_ids: Sequence[str], grades: Mapping[str, float], k: int) -> float:
    """NDCG@k with linear gains: sum_i grade_i / log2(i + 1) over the top k (i from 1), over the same
    sum for the ideal order of ``grades``; 0 when no target has a positive grade."""
    dcg = sum(float(grades.get(d, 0.0)) / math.log2(i + 2) for i, d in enumerate(ranked_ids[:k]))
    ideal = sorted((float(g) for g in grades.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def _contains_span(text: str, spans: Sequence[str]) -> bool:
    """A normalised span occurs in the normalised text on token boundaries."""
    padded = f" {normalize_answer(text)} "
    return any(n and f" {n} " in padded for n in (normalize_answer(s) for s in spans))


# ----- retriever ---------------------------------------------------------------------------------


class BM25Corpus:
    """BM25 (``bm25s``) over a JSONL corpus of ``{"id", "title", "text"}`` rows: ``(query, k) -> docs``.

    Title and text are indexed together, lower-cased, no stemming or stop words. Docs with a zero
    BM25 score (no query word) are not returned: they are an arbitrary order, not a retrieval.
    """

    def __init__(self, path: str, *, id_key: str = "id", title_key: str = "title", text_key: str = "text") -> None:
        import bm25s  # a dependency of rlfold; imported here so the registries load without it

        self.docs: list[dict[str, Any]] = []
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(f"deepretrieval corpus {path!r} does not exist")
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{p}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or id_key not in row or not isinstance(row.get(text_key), str):
                    raise DataError(f"{p}:{n}: a corpus row needs {id_key!r} and a string {text_key!r}")
                self.docs.append({"id": str(row[id_key]), "title": str(row.get(title_key, "")), "text": row[text_key]})
        if not self.docs:
            raise DataError(f"deepretrieval corpus {p} has no documents")
        self._bm25s = bm25s
        self._index = bm25s.BM25()
        self._index.index(bm25s.tokenize([f"{d['title']} {d['text']}" for d in self.docs], stopwords=None,
                                         show_progress=False), show_progress=False)
        self._lock = threading.Lock()

    def __call__(self, query: str, k: int) -> list[dict[str, Any]]:
        if not query.strip():
            return []
        tokens = self._bm25s.tokenize([query], stopwords=None, show_progress=False)
        if not tokens.vocab:
            return []
        with self._lock:
            ids, scores = self._index.retrieve(tokens, k=min(k, len(self.docs)), show_progress=False, n_threads=1)
        return [self.docs[int(i)] for i, s in zip(ids[0], scores[0]) if float(s) > 0]


_CORPORA: dict[tuple[str, float], BM25Corpus] = {}
_CORPORA_LOCK = threading.Lock()


def _bm25(path: str) -> BM25Corpus:
    p = Path(path).expanduser()
    key = (str(p.resolve()), p.stat().st_mtime if p.is_file() else 0.0)
    with _CORPORA_LOCK:
        if key not in _CORPORA:
            _CORPORA[key] = BM25Corpus(str(p))
        return _CORPORA[key]


# ----- the reward --------------------------------------------------------------------------------

_DEFAULT_K = {"recall": 100, "rank": 3000, "ndcg": 1000}


def _grades(targets: Any) -> dict[str, float]:
    if isinstance(targets, Mapping):
        return {str(k): float(v) for k, v in targets.items()}
    return {str(t): 1.0 for t in targets}


def _as_list(targets: Any) -> list[str]:
    return [targets] if isinstance(targets, str) else [str(t) for t in targets]


@REWARDS.register("deepretrieval")
@needs("targets")
def deepretrieval(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    targets: Sequence[Any],
    tier: Literal["recall", "rank", "ndcg"] = "recall",
    corpus: str | None = None,
    retriever: Retriever | None = None,
    k: Annotated[int, Field(ge=1)] | None = None,
) -> list[float | None]:
    """DeepRetrieval query reward (Jiang et al. 2025, arXiv 2503.00223): retrieval quality of the written query.

    Format: ``deepretrieval_format_ok`` (+1 if OK; a bad format scores -4 and the query is not run).
    ``tier="recall"``: answer = ``recall_score`` of |top-k ∩ targets| / |targets|; ``tier="rank"``:
    ``rank_score`` of the first top-k doc containing a target answer span; an unreadable query
    (not ``{"query": str}`` JSON) or a retriever error is -4; total = format + answer (recall 0.55 ->
    5, 0.02 -> -2.5). ``tier="ndcg"``: format +0.1 / -2, total = format + NDCG@k if NDCG > 0, else 0
    with a good format, -2 with a bad one. The retriever is ``retriever`` (from Python: ``(query, k)
    -> docs with "id" and "text"``) or BM25 over the JSONL ``corpus``. None when ``targets`` is
    missing or empty.

    Choices: ``k`` defaults to 100 for recall (the paper's literature engines are not BM25; their
    depth was not in the spec), 3000 for rank (BM25 top-3000) and 1000 for NDCG (training; 10 is the
    evaluation depth); an empty query retrieves nothing; span matching is SQuAD-normalised text on
    token boundaries.
    """
    if tier not in _DEFAULT_K:
        raise ValueError(f"deepretrieval tier must be 'recall', 'rank' or 'ndcg', got {tier!r}")
    if retriever is None:
        if corpus is None:
            raise ValueError("deepretrieval needs a corpus (a JSONL file of id/title/text rows) or a retriever")
        retriever = _bm25(corpus)
    depth = k if k is not None else _DEFAULT_K[tier]
    out: list[float | None] = []
    for c, target in zip(completions, targets):
        if target is None or len(target) == 0:
            out.append(None)
            continue
        ok = deepretrieval_format_ok(c)
        if tier == "ndcg":
            if not ok:
                out.append(-2.0)
                continue
            query = extract_query(c)
            try:
                docs = retriever(query, depth) if query is not None else []
            except Exception:  # noqa: BLE001 - a failing search scores as retrieving nothing
                docs = []
            value = ndcg_at_k([str(d["id"]) for d in docs], _grades(target), depth)
            out.append(0.1 + value if value > 0 else 0.0)
            continue
        if not ok:
            out.append(FORMAT_ERROR)
            continue
        query = extract_query(c)
        try:
            docs = list(retriever(query, depth)[:depth]) if query is not None else None
        except Exception:  # noqa: BLE001 - the paper's "error" tier
            docs = None
        if docs is None:
            answer = FORMAT_ERROR
        elif tier == "recall":
            wanted = set(_as_list(target))
            got = {str(d["id"]) for d in docs}
            answer = recall_score(len(wanted & got) / len(wanted))
        else:
            spans = _as_list(target)
            rank = next((i for i, d in enumerate(docs, 1)
                         if _contains_span(f"{d.get('title', '')} {d.get('text', '')}", spans)), math.inf)
            answer = rank_score(rank)
        out.append(1.0 + answer)
    return out
