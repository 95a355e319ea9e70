"""CaRR rubric reward and the C-GRPO group combination (arXiv 2601.06021), with a rule-based judge.

A rubric is one single-hop fact of a multi-hop question over hidden entities ``<E0>`` (the answer),
``<E1>``, ...; the dataset column ``rubrics`` holds a list of them per prompt, each a mapping:

- ``"fact"``: the fact text, naming its entities as ``<E0>``, ``<E1>`` ...;
- ``"values"``: ``{"E0": "Kimoro", "E1": ["Zorvak", "Zorvak the Elder"]}``, the expected value (or
  aliases) of each entity it names;
- ``"entities"`` (optional): the entities it links; default the ``<E\\d+>`` placeholders of ``fact``;
- ``"terms"`` (optional): the key terms its support needs; default the expected values of its entities.

Pages are read from the tool observations of the same response: an observation line ``URL: <url>``
opens a page, whose content runs to the next ``URL:`` line or the end of that observation block
(Search-R1 ``<information>`` or R1-Searcher ``<|begin_of_documents|>`` blocks; a response without
blocks is read as one). Citations are ``[n](url)`` links (the CaRR regex, see ``CITATION``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from rlfold.core.groups import group_index
from rlfold.core.registry import needs
from rlfold.core.types import Prompt
from rlfold.rewards.base import REWARDS
from rlfold.rewards.qa import normalize_answer
from rlfold.rewards.shaping import SHAPINGS, Shaped, ShapingInput

__all__ = ["CITATION", "c_grpo", "c_grpo_combine", "carr_rubric", "cited_pages", "rubric_reward"]

# CaRR's citation pattern: "[n](url)" followed by "]" or "," (e.g. "[[1](https://a.org/x)]").
CITATION = re.compile(r"\[\d+\]\((?:view-source:)?(https?://.+?)\)[\],]")
_JINA = "r.jina.ai/"
_MAX_CITATIONS = 20
_BLOCKS = re.compile(r"<information>(.*?)(?:</information>|$)"
                     r"|<\|begin_of_documents\|>(.*?)(?:<\|end_of_documents\|>|$)",
                     re.DOTALL)
_URL_LINE = re.compile(r"^\s*URL:\s*(\S+)\s*$", re.MULTILINE)
_ENTITY = re.compile(r"<(E\d+)>")


def _clean_url(url: str) -> str:
    """Drop a ``https://r.jina.ai/`` reader prefix and a trailing slash."""
    if _JINA in url:
        url = url.split(_JINA, 1)[1]
    return url.rstrip("/")


def observation_pages(text: str) -> dict[str, str]:
    """``{url: page content}`` of the pages in the tool observations of a response (module docstring)."""
    blocks = [a or b for a, b in _BLOCKS.findall(text)] or [text]
    pages: dict[str, str] = {}
    for block in blocks:
        marks = list(_URL_LINE.finditer(block))
        for m, nxt in zip(marks, marks[1:] + [None]):
            end = nxt.start() if nxt is not None else len(block)
            url = _clean_url(m.group(1))
            pages[url] = (pages.get(url, "") + "\n" + block[m.end():end]).strip()
    return pages


def model_text(text: str) -> str:
    """The response without its tool observation blocks (what the model itself wrote)."""
    return _BLOCKS.sub(" ", text)


def cited_pages(text: str) -> tuple[list[str], str]:
    """The cited URLs (de-duplicated, in order, at most 20, reader prefix removed) and the citation
    context: the contents of the observed pages they name, joined."""
    urls: list[str] = []
    for raw in CITATION.findall(model_text(text)):
        url = _clean_url(raw)
        if url not in urls:
            urls.append(url)
    urls = urls[:_MAX_CITATIONS]
    pages = observation_pages(text)
    return urls, "\n".join(pages[u] for u in urls if u in pages)


def _values(v: Any) -> list[str]:
    return [v] if isinstance(v, str) else [str(x) for x in v]


def _occurs(value: str, normalised_text: str) -> bool:
    n = normalize_answer(value)
    return bool(n) and f" {n} " in normalised_text


def rubric_reward(text: str, rubrics: Sequence[Mapping[str, Any]], bfs: bool = True) -> float:
    """R_r of one response: the fraction of its rubrics that are filled, supported by cited pages and,
    with ``bfs``, connected to ``E0`` through supported rubrics (a rubric links all its entities).

    Rule-based judge: an entity is filled when one of its values occurs in the model's own text
    (normalised, on token boundaries); a filled rubric is supported when every key term occurs in
    the citation context. No citation: 0. ``bfs=False`` is CaRR's ``use_rubric_reward_nobfs`` (the
    supported fraction).
    """
    if not rubrics:
        return 0.0
    urls, context = cited_pages(text)
    if not urls:
        return 0.0
    own = f" {normalize_answer(model_text(text))} "
    ctx = f" {normalize_answer(context)} "
    supported: list[set[str]] = []
    for r in rubrics:
        values = {str(k).strip("<>"): _values(v) for k, v in dict(r.get("values", {})).items()}
        entities = {str(e).strip("<>") for e in (r.get("entities") or _ENTITY.findall(str(r.get("fact", ""))))}
        filled = all(any(_occurs(v, own) for v in values.get(e, [])) for e in entities)
        terms = r.get("terms")
        term_groups = [_values(t) for t in terms] if terms else [values.get(e, []) for e in entities]
        ok = filled and bool(term_groups) and all(any(_occurs(v, ctx) for v in g) for g in term_groups)
        supported.append(entities if ok else set())
    if not bfs:
        return sum(1 for s in supported if s) / len(rubrics)
    reached_entities, reached = {"E0"}, set()
    changed = True
    while changed:
        changed = False
        for i, ents in enumerate(supported):
            if i not in reached and ents & reached_entities:
                reached.add(i)
                reached_entities |= ents
                changed = True
    return len(reached) / len(rubrics)


@REWARDS.register("carr_rubric")
@needs("rubrics")
def carr_rubric(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    finishes: Sequence[str],
    *,
    rubrics: Sequence[Any],
    bfs: bool = True,
) -> list[float | None]:
    """CaRR rubric reward R_r (arXiv 2601.06021): reached rubrics / all rubrics, cited evidence and BFS from E0.

    ``rubric_reward`` on each response with the prompt's ``rubrics`` column (module docstring for
    its shape); None where a prompt has no rubrics. 4 rubrics of which 3 are reached: 0.75.

    Choice: a rule-based judge replaces CaRR's LLM judge (string presence of entity values in the
    response and of key terms in the cited pages), and pages come from ``URL:`` lines of the
    response's own tool observations. The outcome R_o and the mix are ``c_grpo``.
    """
    out: list[float | None] = []
    for c, rs in zip(completions, rubrics):
        out.append(None if not rs else rubric_reward(c, rs, bfs))
    return out


def c_grpo_combine(outcome: Tensor, rubric: Tensor, group_ids: Tensor, alpha: float = 0.3,
                   normalize: bool = True, mode: Literal["positive", "negative", "all"] = "positive") -> Tensor:
    """C-GRPO's reward [B] from outcome R_o [B], rubric R_r [B] and group ids [B] (rows of one prompt).

    R̂_r = R_r / max_group R_r with ``normalize`` (0 in a group whose max is 0), else R_r.
    ``mode="positive"`` (CaRR's ``rubric_only_positive``): R_o where R_o = 0, else (1 - α) R_o + α R_r
    with the *un-normalised* R_r, as CaRR's code does; ``"negative"``: R_o where R_o > 0, else α R̂_r;
    ``"all"``: (1 - α) R_o + α R̂_r.
    """
    r_o, r_r = outcome.float(), rubric.float()
    if normalize:
        inv, n = group_index(group_ids)
        top = torch.zeros(n).scatter_reduce(0, inv, r_r, reduce="amax", include_self=False)[inv]
        r_hat = torch.where(top > 0, r_r / top.clamp(min=1e-12), torch.zeros_like(r_r))
    else:
        r_hat = r_r
    if mode == "positive":
        return torch.where(r_o == 0, r_o, (1 - alpha) * r_o + alpha * r_r)
    if mode == "negative":
        return torch.where(r_o > 0, r_o, alpha * r_hat)
    if mode == "all":
        return (1 - alpha) * r_o + alpha * r_hat
    raise ValueError(f"c_grpo mode must be 'positive', 'negative' or 'all', got {mode!r}")


@SHAPINGS.register("c_grpo")
def c_grpo(
    inp: ShapingInput,
    *,
    state: dict,
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.3,
    normalize: bool = True,
    mode: Literal["positive", "negative", "all"] = "positive",
    bfs: bool = True,
) -> Shaped:
    """C-GRPO (CaRR, arXiv 2601.06021): mix the outcome with the rubric reward, for correct answers by default.

    R_o = the accuracy reward ``inp.correct`` (0/1), R_r = ``rubric_reward`` of each completion with
    its prompt's ``meta["rubrics"]`` (0 without rubrics), combined by ``c_grpo_combine`` over the
    groups; the result replaces the scores. Defaults as CaRR's training scripts: α = 0.3, group
    normalisation on, ``mode="positive"`` (correct with R_r 0.75: 0.925; wrong: 0; correct without
    citations: 0.7). State unused. Metric ``shaping/c_grpo/rubric_mean``.

    Choice: the rubric reward is recomputed here from the prompts' rubrics (a shaping part does not
    see other rewards' scores); the LLM judge is the rule-based one of ``carr_rubric``.
    """
    r_o = torch.nan_to_num(inp.correct.detach().float(), nan=0.0)
    rubric = [rubric_reward(c, (p.meta or {}).get("rubrics") or [], bfs) for p, c in zip(inp.prompts, inp.completions)]
    r_r = torch.tensor(rubric, dtype=torch.float32)
    scores = c_grpo_combine(r_o, r_r, inp.group_ids, alpha, normalize, mode)
    return Shaped(scores=scores, metrics={"shaping/c_grpo/rubric_mean": float(r_r.mean()) if len(rubric) else 0.0})
