"""DeepRetrieval (rewards.md §18) and CaRR / C-GRPO (§20): the spec's worked numbers, BM25 retrieval, rubric BFS."""

import json

import pytest
import torch
from shaping_inputs import make_input, run_part

from rlfold.core.registry import REWARDS, SHAPINGS
from rlfold.core.types import FINISH_STOP, Prompt
from rlfold.rewards import score_rewards
from rlfold.rewards.search_retrieval import (deepretrieval_format_ok, extract_query, ndcg_at_k, rank_score,
                                             recall_score)
from rlfold.rewards.search_rubric import c_grpo_combine, cited_pages, observation_pages, rubric_reward


def _query(q: str) -> str:
    return f'<think>plan</think><answer>{json.dumps({"query": q})}</answer>'


def _fixed(ids):
    """A retriever returning the given ranked doc ids (with texts "doc <id>")."""
    return lambda query, k: [{"id": i, "text": f"doc {i}"} for i in ids][:k]


def _dr(text, target, **kw):
    return REWARDS.get("deepretrieval")([Prompt("q", "")], [text], [FINISH_STOP], targets=[target], **kw)[0]


# ----- DeepRetrieval -----------------------------------------------------------------------------


def test_format_check():
    assert deepretrieval_format_ok(_query("x"))
    assert deepretrieval_format_ok("Assistant: " + _query("x"))
    assert deepretrieval_format_ok("<think>Assistant: <answer></think>" + "Assistant:" + _query("x"))  # last marker
    assert not deepretrieval_format_ok('<answer>{"query": "x"}</answer><think>p</think>')   # out of order
    assert not deepretrieval_format_ok(_query("x") + "<answer>y</answer>")                  # twice
    assert not deepretrieval_format_ok('<answer>{"query": "x"}</answer>')                   # no think
    assert extract_query(_query("heart attack")) == "heart attack"
    assert extract_query("<think>p</think><answer>heart attack</answer>") is None
    assert extract_query('<think>p</think><answer>{"query": 3}</answer>') is None


def test_tiers():
    assert [recall_score(r) for r in (0.7, 0.55, 0.4, 0.3, 0.1, 0.05, 0.02)] == [5, 4, 3, 1, 0.5, 0.1, -3.5]
    assert [rank_score(r) for r in (1, 6, 21, 51, 101, 1001, 3001, float("inf"))] == [5, 4, 2, 1, 0.5, 0.1, -3.5, -3.5]


def test_recall_worked_numbers():
    target = [f"t{i}" for i in range(20)]
    assert _dr(_query("q"), target, retriever=_fixed(target[:11] + ["x"])) == 5.0       # recall 0.55: 1 + 4
    assert _dr(_query("q"), [f"t{i}" for i in range(50)], retriever=_fixed(["t0", "x"])) == -2.5  # 0.02: 1 - 3.5
    assert _dr("<answer>q</answer>", target, retriever=_fixed(target)) == -4.0            # bad format
    assert _dr("<think>p</think><answer>not json</answer>", target, retriever=_fixed(target)) == -3.0  # error tier
    assert _dr(_query("q"), target, retriever=_fixed(target), k=5) == 1.0 + 0.5          # top-5 of 20: recall .25
    assert _dr(_query("q"), [], retriever=_fixed(target)) is None

    def boom(query, k):
        raise RuntimeError("down")

    assert _dr(_query("q"), target, retriever=boom) == -3.0


def test_rank_and_ndcg():
    docs = [{"id": str(i), "text": "nothing here"} for i in range(30)] + [{"id": "a", "text": "It is Kimoro, town."}]
    ret = lambda q, k: docs[:k]  # noqa: E731
    assert _dr(_query("q"), ["Kimoro"], tier="rank", retriever=ret) == 1.0 + 2.0          # rank 31: <= 50 -> 2
    assert _dr(_query("q"), ["Kim"], tier="rank", retriever=ret) == 1.0 - 3.5             # token boundaries
    assert _dr(_query("q"), "kimoro", tier="rank", retriever=lambda q, k: docs[30:]) == 6.0
    assert ndcg_at_k(["a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "a"], {"a": 1}, 10) == pytest.approx(1 / torch.log2(torch.tensor(3.0)).item())
    assert ndcg_at_k(["x", "a"], {"a": 1}, 1) == 0.0
    assert _dr(_query("q"), {"1": 1}, tier="ndcg", retriever=ret) == pytest.approx(0.1 + 1 / torch.log2(
        torch.tensor(3.0)).item())
    assert _dr(_query("q"), ["zz"], tier="ndcg", retriever=ret) == 0.0                    # NDCG 0, good format
    assert _dr("bad", ["1"], tier="ndcg", retriever=ret) == -2.0


def test_bm25_corpus_through_score_rewards(tmp_path):
    rows = [{"id": "d1", "title": "Zorvak", "text": "Zorvak lives in Kimoro."},
            {"id": "d2", "title": "Pellin", "text": "Pellin was born in Ostra."},
            {"id": "d3", "title": "Ostra", "text": "Ostra is a port town."}]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prompts = [Prompt("q", "", {"targets": ["d2", "d3"]}), Prompt("q", "", {"targets": ["d1"]}),
               Prompt("q", "", {"targets": ["d1"]}), Prompt("q", "", {"targets": None})]
    texts = [_query("Ostra"), _query("Zorvak"), _query("   "), _query("Ostra")]
    res = score_rewards([("deepretrieval", 1.0, {"corpus": str(corpus), "k": 2})], prompts, texts, [FINISH_STOP] * 4)
    got = res.per_fn["deepretrieval"].tolist()
    assert got[:3] == [6.0, 6.0, -2.5]          # recall 1, recall 1, the empty query retrieves nothing
    assert got[3] != got[3]                      # no targets: unscorable
    with pytest.raises(ValueError, match="corpus"):
        _dr(_query("q"), ["d1"])


# ----- CaRR --------------------------------------------------------------------------------------

PAGES = ("<information>\nURL: https://wiki.org/Zorvak\nZorvak lives in Kimoro. Zorvak wrote Ilda.\n"
         "URL: https://wiki.org/Ilda\nIlda is a poem from 1820 by Zorvak.\n</information>\n\n")
RUBRICS = [
    {"fact": "<E1> lives in <E0>", "values": {"E0": "Kimoro", "E1": "Zorvak"}},
    {"fact": "<E1> wrote <E2>", "values": {"E1": "Zorvak", "E2": "Ilda"}},
    {"fact": "<E2> dates from <E3>", "values": {"E2": "Ilda", "E3": "1820"}},
    {"fact": "<E1> was born in <E4>", "values": {"E1": "Zorvak", "E4": "Pellin"}},   # unsupported
]
ANSWER = ("<search> Zorvak </search>\n\n" + PAGES + "Zorvak lives in Kimoro [[1](https://wiki.org/Zorvak)] and wrote "
          "Ilda in 1820 [[2](https://r.jina.ai/https://wiki.org/Ilda/)], born in Pellin.\n<answer> Kimoro </answer>")


def test_pages_and_citations():
    pages = observation_pages(ANSWER)
    assert set(pages) == {"https://wiki.org/Zorvak", "https://wiki.org/Ilda"}
    assert "1820" in pages["https://wiki.org/Ilda"]
    urls, context = cited_pages(ANSWER)
    assert urls == ["https://wiki.org/Zorvak", "https://wiki.org/Ilda"] and "poem" in context
    assert cited_pages("see [1](https://a.org) now")[0] == []                # CaRR's regex needs "]" or "," after


def test_rubric_reward_worked_number_and_bfs():
    assert rubric_reward(ANSWER, RUBRICS) == 0.75                           # 3 of 4 reached
    no_cite = ANSWER.replace("[[1](https://wiki.org/Zorvak)]", "").replace(
        "[[2](https://r.jina.ai/https://wiki.org/Ilda/)]", "")
    assert rubric_reward(no_cite, RUBRICS) == 0.0                           # no citations
    only_ilda = ANSWER.replace("[[1](https://wiki.org/Zorvak)]", "")
    # the Zorvak page is no longer cited: rubric 0 and 1 unsupported; rubric 2 is supported but not linked to E0
    assert rubric_reward(only_ilda, RUBRICS) == 0.0
    assert rubric_reward(only_ilda, RUBRICS, bfs=False) == 0.5             # rubrics 1 (Zorvak, Ilda on page 2), 2
    unfilled = ANSWER.replace("and wrote Ilda in 1820", "and wrote a poem")
    assert rubric_reward(unfilled, RUBRICS) == 0.25                         # E2 / E3 not filled by the model
    obs_only = ("<search> Zorvak </search>\n\n" + PAGES + "It is [[1](https://wiki.org/Zorvak)].\n<answer> x </answer>")
    assert rubric_reward(obs_only, RUBRICS) == 0.0                          # values only in the observation
    terms = [dict(RUBRICS[0], terms=["Kimoro", "lives"])]
    assert rubric_reward(ANSWER, terms) == 1.0
    assert rubric_reward(ANSWER, [dict(RUBRICS[0], terms=["Kimoro", "died"])]) == 0.0


def test_carr_rubric_through_score_rewards():
    prompts = [Prompt("q", "Kimoro", {"rubrics": RUBRICS}), Prompt("q", "Kimoro", {"rubrics": []})]
    res = score_rewards([("carr_rubric", 1.0)], prompts, [ANSWER, ANSWER], [FINISH_STOP] * 2)
    got = res.per_fn["carr_rubric"].tolist()
    assert got[0] == 0.75 and got[1] != got[1]


# ----- C-GRPO ------------------------------------------------------------------------------------


def test_c_grpo_worked_numbers():
    r_o = torch.tensor([1.0, 0.0, 1.0])
    r_r = torch.tensor([0.75, 0.75, 0.0])
    out = c_grpo_combine(r_o, r_r, torch.tensor([0, 0, 0]))
    assert out.tolist() == pytest.approx([0.925, 0.0, 0.7])


def test_c_grpo_branches_and_normalisation():
    r_o = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0])
    r_r = torch.tensor([0.5, 0.25, 0.5, 0.0, 0.0])
    g = torch.tensor([0, 0, 0, 1, 1])
    # positive: un-normalised R_r even with normalisation on (CaRR's code)
    assert c_grpo_combine(r_o, r_r, g).tolist() == pytest.approx([0.85, 0.775, 0.0, 0.0, 0.7])
    # negative: R_o where positive, else alpha * R_r / group max (0 where the group max is 0)
    assert c_grpo_combine(r_o, r_r, g, mode="negative").tolist() == pytest.approx([1, 1, 0.3, 0, 1])
    assert c_grpo_combine(r_o, r_r, g, mode="negative", normalize=False).tolist() == pytest.approx([1, 1, 0.15, 0, 1])
    assert c_grpo_combine(r_o, r_r, g, mode="all").tolist() == pytest.approx([1.0, 0.85, 0.3, 0.0, 0.7])
    with pytest.raises(ValueError):
        c_grpo_combine(r_o, r_r, g, mode="both")


def test_c_grpo_shaping_part():
    assert "c_grpo" in SHAPINGS
    no_cite = ANSWER.replace("[[1](https://wiki.org/Zorvak)]", "").replace(
        "[[2](https://r.jina.ai/https://wiki.org/Ilda/)]", "")
    inp = make_input([ANSWER, ANSWER, no_cite, ANSWER], "Kimoro", [1, 0, 1, 1], groups=[0, 0, 0, 1])
    inp.prompts[3].meta["rubrics"] = []  # no rubrics: R_r 0
    for p in inp.prompts[:3]:
        p.meta["rubrics"] = RUBRICS
    out = run_part("c_grpo", inp)
    assert out.scores.tolist() == pytest.approx([0.925, 0.0, 0.7, 0.7])
    assert out.metrics["shaping/c_grpo/rubric_mean"] == pytest.approx(0.75 * 2 / 4)
    assert SHAPINGS.get("c_grpo").__doc__.strip().splitlines()[0].count("arXiv 2601.06021") == 1


def test_recipe_options_are_validated():
    from rlfold.core.config_loader import load_config
    from rlfold.core.errors import ConfigError

    cfg = load_config(None, ["rewards=[{name: deepretrieval, kwargs: {corpus: c.jsonl, tier: rank, k: 10}}, "
                             "{name: carr_rubric}, {name: hdpo_tool, kwargs: {tool_format: r1_searcher}}]",
                             "shaping=[{name: c_grpo, kwargs: {alpha: 0.5, mode: negative}}]"])
    assert [r.name for r in cfg.rewards] == ["deepretrieval", "carr_rubric", "hdpo_tool"]
    for bad in ["rewards=[{name: deepretrieval, kwargs: {tier: ndgc}}]", "shaping=[{name: c_grpo, kwargs: {alpha: 2}}]",
                "rewards=[{name: hdpo_accuracy, kwargs: {answer_reward: serch_em}}]"]:
        with pytest.raises(ConfigError):
            load_config(None, [bad])
