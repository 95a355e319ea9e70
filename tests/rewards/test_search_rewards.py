"""Search-agent rewards (rewards.md §16, §17, §19; policy.md §17): the spec's worked numbers and edge cases."""

import pytest
import torch

from rlfold.core.registry import REWARDS, TOOL_FORMATS
from rlfold.core.types import FINISH_STOP, Prompt
from rlfold.rewards import score_rewards
from rlfold.rewards.search import (count_tool_calls, f1_aware, r1_searcher_f1, r1_searcher_violations, searched)

NEW = ["search_em", "r1_searcher_stage2", "adasearch_decision", "hdpo_accuracy", "hdpo_tool",
       "deepretrieval", "carr_rubric"]


def _one(name, answer, text, meta=None, **kw):
    fn = REWARDS.get(name)
    return fn([Prompt("q", answer, meta or {})], [text], [FINISH_STOP], **kw)[0]


@pytest.mark.parametrize("name", NEW)
def test_registered_with_a_cited_first_docstring_line(name):
    first = REWARDS.get(name).__doc__.strip().splitlines()[0]
    assert "arXiv" in first and first.endswith(".")


# ----- the trace of the brief: Search-R1 format ---------------------------------------------------

SR1 = ("<think>who?</think>\n<search> Zorvak </search>\n\n<information>Doc 1(Title: Zorvak) Zorvak lives in Kimoro.\n"
       "</information>\n\n<think>so</think>\n<answer> Kimoro </answer>")


def test_search_em_on_the_response():
    assert _one("search_em", "Kimoro", SR1) == 1.0
    assert _one("search_em", "kimoro.", SR1) == 1.0                              # SQuAD normalisation
    assert _one("search_em", "Lake Kimoro", SR1) == 0.0
    assert _one("search_em", "x", SR1, meta={"answers": ["Paris", "Kimoro"]}) == 1.0  # any gold
    assert _one("search_em", "Kimoro", "Kimoro") == 0.0                          # no answer tags: no fallback
    assert _one("search_em", "Kimoro", "<answer>Kimoro</answer> <answer>Lyon</answer>") == 0.0  # the last one
    assert _one("search_em", "Kimoro", "<answer>Lyon</answer> <answer> the Kimoro</answer>") == 1.0
    assert _one("search_em", "", SR1) is None


def test_search_em_min_matches_reproduces_the_prompt_plus_response_rule():
    prompt = "For example, <answer> Beijing </answer>. Question: capital of France?\n"
    response = "<think>x</think><answer> Paris </answer>"
    assert _one("search_em", "paris", prompt + response, min_matches=2) == 1.0   # the spec's example
    assert _one("search_em", "paris", response, min_matches=2) == 0.0           # original code on the response
    assert _one("search_em", "paris", response) == 1.0                          # the default, >= 1


def test_search_em_subem():
    assert _one("search_em", "Kimoro", "<answer>the town of Kimoro</answer>") == 0.0
    assert _one("search_em", "Kimoro", "<answer>the town of Kimoro</answer>", subem=True) == 1.0


def test_search_r1_format_aware_worked_numbers():
    """Search-R1 format-aware variant (2505.15117) is the existing ``search_r1_em_format``: 1/.8/.3/.2/.1/0."""
    f = "search_r1_em_format"
    assert _one(f, "Kimoro", SR1) == pytest.approx(1.0)
    assert _one(f, "Kimoro", "Sure. " + SR1) == pytest.approx(0.8)
    assert _one(f, "Kimoro", SR1.replace("<answer> Kimoro", "<answer> Lyon")) == pytest.approx(0.3)
    assert _one(f, "Berlin", SR1) == pytest.approx(0.2)
    assert _one(f, "Berlin", "Sure. " + SR1) == pytest.approx(0.1)
    assert _one(f, "Berlin", "no answer at all") == 0.0


# ----- R1-Searcher ------------------------------------------------------------------------------

DOCS = "<|end_of_query|>\n\n<|begin_of_documents|>\n(1)Zorvak lives in Kimoro.\n(2)x\n<|end_of_documents|>\n\n"
R1S = f"I search. <|begin_of_query|> Zorvak {DOCS}So Kimoro.</think>\n\n<answer> Kimoro </answer>"


def test_r1_searcher_stage1_worked_numbers():
    assert _one("r1_searcher_stage1", "Kimoro", R1S) == 2.0      # correct + good retrieval + good format
    assert _one("r1_searcher_stage1", "Lyon", R1S) == 0.0        # wrong + good retrieval + good format


def test_r1_searcher_f1_yes_no_rule():
    assert r1_searcher_f1("yes", "no") == 0.0
    assert r1_searcher_f1("True", "yes") == 1.0
    assert r1_searcher_f1("False", "no") == 1.0
    assert r1_searcher_f1("yes it is", "yes") == 0.0     # the gold is yes, the prediction is not: 0, not F1 0.5
    assert r1_searcher_f1("yes", "yes it is") == 0.0
    assert r1_searcher_f1("it is yes", "it is") == pytest.approx(0.8)   # neither side is exactly yes/no
    assert r1_searcher_f1("noanswer", "Kimoro") == 0.0
    assert r1_searcher_f1("Kimoro", "noanswer") == 0.0
    assert r1_searcher_f1("New_York city", "new york") == pytest.approx(0.8)  # '_' is a space
    assert r1_searcher_f1("the", "a") == 1.0                                   # both empty after normalising


def test_r1_searcher_stage2_worked_numbers():
    half = R1S.replace("<answer> Kimoro </answer>", "<answer> Kimoro town </answer>")   # P 1/2, R 1: F1 2/3
    assert _one("r1_searcher_stage2", "Kimoro", R1S) == pytest.approx(1.0)
    assert _one("r1_searcher_stage2", "Kimoro", half) == pytest.approx(2 / 3)
    # F1 = 0.5 with a format violation -> -1.5 (Qwen zero, penalty 2); -0.5 with the Llama penalty 1
    half_f1 = R1S.replace("<answer> Kimoro </answer>", "<answer> Kimoro east </answer>")
    gold = "Kimoro west"                                                       # P 1/2, R 1/2
    bad = half_f1 + "\nAssistant: done"
    assert _one("r1_searcher_stage2", gold, half_f1) == pytest.approx(0.5)
    assert _one("r1_searcher_stage2", gold, bad) == pytest.approx(-1.5)
    assert _one("r1_searcher_stage2", gold, bad.replace("</think>", "</think></think>"), variant="llama") \
        == pytest.approx(-0.5)
    assert _one("r1_searcher_stage2", gold, bad, variant="llama") == pytest.approx(0.5)  # "Assistant" is Qwen-only
    assert _one("r1_searcher_stage2", gold, bad, penalty=3.0) == pytest.approx(-2.5)


def test_r1_searcher_stage2_violations():
    assert r1_searcher_violations(R1S) == []
    assert r1_searcher_violations("I know.</think><answer>Kimoro</answer>") == []        # no retrieval is fine
    assert "markers" in r1_searcher_violations(R1S.replace("(1)", ""))
    assert "tags" in r1_searcher_violations("<think>" + R1S)
    assert "tags" in r1_searcher_violations(R1S + "<answer>x</answer>")
    assert "chinese" in r1_searcher_violations(R1S.replace("So Kimoro.", "所以 Kimoro."))
    assert r1_searcher_violations(R1S.replace("(1)Zorvak", "(1)佐尔瓦克 Zorvak")) == []   # inside documents
    long = R1S.replace("<answer> Kimoro </answer>", "<answer> " + "w " * 11 + "</answer>")
    assert "answer_length" in r1_searcher_violations(long)
    assert "answer_length" not in r1_searcher_violations(long, variant="llama")
    tagged = R1S.replace("<answer> Kimoro", "<answer> <|begin_of_query|> Kimoro")
    assert "answer_tags" in r1_searcher_violations(tagged)
    assert "tags" in r1_searcher_violations(R1S, prefilled_think=False)
    assert r1_searcher_violations("<think>" + R1S, prefilled_think=False) == []


def test_r1_searcher_stage2_missing_answer_and_gold():
    assert _one("r1_searcher_stage2", "Kimoro", "So Kimoro.</think>") == pytest.approx(-2.0)   # F1 0, tags broken
    assert _one("r1_searcher_stage2", "", R1S) is None


# ----- tool calls, AdaSearch ---------------------------------------------------------------------


def test_count_tool_calls():
    assert count_tool_calls(SR1) == 1
    two = SR1.replace("<answer> Kimoro </answer>", "<search> Kimoro </search>\n\n<information>d</information>"
                      "<answer> Kimoro </answer>")
    assert count_tool_calls(two) == 2
    assert count_tool_calls("<think>x</think><search>  </search><answer>a</answer>") == 0   # empty query
    assert count_tool_calls("<think>x</think><answer>a</answer>") == 0
    assert count_tool_calls("<lookup>q</lookup>", tag="lookup") == 1
    assert not searched("<answer>a</answer>") and searched(SR1)


@pytest.mark.skipif("r1_searcher" not in TOOL_FORMATS or "search_r1" not in TOOL_FORMATS,
                    reason="tool formats not registered")
def test_count_tool_calls_with_a_registered_format():
    assert count_tool_calls(R1S, tool_format="r1_searcher") == 1
    two = R1S.replace("So Kimoro.", f"More. <|begin_of_query|> Kimoro {DOCS}So Kimoro.")
    assert count_tool_calls(two, tool_format="r1_searcher") == 2
    assert count_tool_calls("<|begin_of_query|>  <|end_of_query|> x", tool_format="r1_searcher") == 0
    assert count_tool_calls(R1S) == 0                                    # the tag rule does not read markers
    assert count_tool_calls(SR1, tool_format="search_r1") == 1


def test_adasearch_decision():
    texts = [SR1, "<think>easy</think><answer> Kimoro </answer>", SR1, "<answer> Kimoro </answer>", SR1]
    labels = [True, False, False, True, None]
    prompts = [Prompt("q", "Kimoro", {"needs_search": y}) for y in labels]
    res = score_rewards([("adasearch_decision", 1.0)], prompts, texts, [FINISH_STOP] * 5)
    got = res.per_fn["adasearch_decision"].tolist()
    assert got[:4] == [1.0, 1.0, 0.0, 0.0] and got[4] != got[4]   # None -> NaN
    fn = REWARDS.get("adasearch_decision")
    assert fn(prompts[:1], [R1S], [FINISH_STOP], needs_search=[True], tool_format="r1_searcher") == [1.0]
    assert fn(prompts[:1], [SR1], [FINISH_STOP], needs_search=["false"], wrong_value=-1.0) == [-1.0]
    with pytest.raises(ValueError, match="needs_search"):
        fn(prompts[:1], [SR1], [FINISH_STOP], needs_search=["maybe"])


def test_f1_aware_positive_class_is_no_search():
    labels = [True, False, False, True]          # needs search
    assert f1_aware([True] * 4, labels) == 0.0   # always searching (Search-R1): F1_aware 0
    assert f1_aware([True, False, False, True], labels) == 1.0
    # TP 1 (row 1), FP 1 (row 0: skipped a needed search), FN 1 (row 2: searched needlessly): 2/(2+1+1)
    assert f1_aware([False, False, True, True], labels) == pytest.approx(0.5)
    assert f1_aware(torch.tensor([True, True]), torch.tensor([True, True])) == 0.0   # no positive anywhere
    with pytest.raises(ValueError):
        f1_aware([True], [True, False])


# ----- HDPO -------------------------------------------------------------------------------------


def test_hdpo_accuracy():
    assert _one("hdpo_accuracy", "Kimoro", SR1) == pytest.approx(1.0)                       # 0.9 + 0.1
    assert _one("hdpo_accuracy", "Lyon", SR1) == pytest.approx(0.1)                         # format only
    assert _one("hdpo_accuracy", "Kimoro", "Sure. " + SR1) == pytest.approx(0.9)            # answer only
    assert _one("hdpo_accuracy", "", SR1) is None


def test_hdpo_tool_matches_the_policy_spec_example():
    """policy.md §17: tools [2,0,1,1], correct [1,1,0,1] -> r_tool [1/3, 1, 0, 1/2]."""
    one = SR1
    two = SR1.replace("<answer>", "<search> more </search>\n\n<information>d</information>\n\n<answer>")
    none = "<think>easy</think>\n<answer> Kimoro </answer>"
    texts = [two, none, one.replace("Kimoro </answer>", "Lyon </answer>"), one]
    assert [count_tool_calls(t) for t in texts] == [2, 0, 1, 1]
    prompts = [Prompt("q", "Kimoro")] * 4
    res = score_rewards([("hdpo_tool", 1.0), ("hdpo_accuracy", 1.0)], prompts, texts, [FINISH_STOP] * 4)
    assert res.per_fn["hdpo_tool"].tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.5])
    assert res.per_fn["hdpo_accuracy"].tolist() == pytest.approx([0.9, 1.0, 0.1, 1.0])  # `two` breaks the grammar
    assert _one("hdpo_tool", "", SR1) is None


def test_hdpo_refuses_an_inner_reward_that_needs_a_column():
    from rlfold.core.errors import ConfigError

    with pytest.raises(ConfigError, match="needs"):
        _one("hdpo_tool", "Kimoro", SR1, answer_reward="adasearch_decision")


def test_scored_as_a_batch():
    prompts = [Prompt("q", "Kimoro"), Prompt("q", "Lyon")]
    res = score_rewards([("search_em", 1.0), ("r1_searcher_stage2", 0.5)], prompts, [SR1, R1S], [FINISH_STOP] * 2)
    assert res.per_fn["search_em"].tolist() == [1.0, 0.0]
    # SR1 under R1-Searcher's rules: F1 1 but a second <think> after the prefilled one (-2); R1S vs Lyon: F1 0
    assert res.per_fn["r1_searcher_stage2"].tolist() == pytest.approx([-1.0, 0.0])
    assert res.total.tolist() == pytest.approx([0.5, 0.0])
