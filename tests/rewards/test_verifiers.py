"""Verifier and format rewards on hand-made cases: math-verify, GSM8K, SQuAD EM/F1/cover-EM, R1/Search-R1 formats."""

from __future__ import annotations

import threading

import pytest

from rlfold.core.registry import REWARDS
from rlfold.core.types import Prompt
from rlfold.rewards import formats, qa
from rlfold.rewards import math as rmath

S = "stop"


def _one(fn, answer, completion, meta=None, **kw):
    return fn([Prompt("q", answer, dict(meta or {}))], [completion], [S], **kw)[0]


# ------------------------------------------------------------------------------------------ registry


NAMES = [
    "math_verify", "gsm8k", "qa_exact_match", "token_f1", "cover_exact_match", "think_answer_format",
    "r1_searcher_format", "r1_searcher_stage1", "search_r1_format", "search_r1_em_format",
]


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_a_cited_first_docstring_line(name):
    fn = REWARDS.get(name)
    first = (fn.__doc__ or "").strip().splitlines()[0]
    assert "arXiv" in first, (name, first)


def test_batch_shape_and_order():
    prompts = [Prompt("q", "72"), Prompt("q", "5"), Prompt("q", "")]
    out = rmath.math_verify(prompts, ["\\boxed{72}", "\\boxed{6}", "\\boxed{1}"], [S, S, S])
    assert out == [1.0, 0.0, None]


# ------------------------------------------------------------------------------------------ math_verify


@pytest.mark.parametrize(
    "gold, completion",
    [
        ("72", "So she makes 9 * 8 = 72 dollars, and the answer is \\boxed{72}."),
        ("72", "The answer is 72."),
        ("1/2", "\\boxed{0.5}"),                       # fraction gold, decimal answer
        ("0.5", "so the probability is $\\frac{1}{2}$"),  # decimal gold, fraction answer
        ("\\frac{1}{2}", "The answer is 1/2."),        # bare-LaTeX gold
        ("\\sqrt{2}", "\\boxed{\\sqrt 2}"),
        ("\\sqrt{2}", "\\boxed{1.41421356}"),          # numeric equality at 6 decimals
        ("x^2+1", "\\boxed{1 + x^2}"),                  # symbolic equality
        ("1450000", "The total is 1,450,000."),         # thousands separators
        ("-10", "The temperature fell to \\boxed{-10}"),
        ("\\{1,2\\}", "\\boxed{\\{2, 1\\}}"),           # sets are unordered
        ("18", "\\boxed{\\$18}"),                       # currency sign in the box
        ("\\$18", "\\boxed{18}"),                       # escaped dollar in the gold is text, not math
        ("She earns 9 * 2 = $18 a day.\n#### 18", "The answer is 18."),  # full GSM8K solution as gold
    ],
)
def test_math_verify_accepts_equivalent_answers(gold, completion):
    assert _one(rmath.math_verify, gold, completion) == 1.0


@pytest.mark.parametrize(
    "gold, completion",
    [
        ("72", "\\boxed{73}"),
        ("72", "The answer is 71."),
        ("1/2", "\\boxed{0.6}"),
        ("\\sqrt{2}", "\\boxed{1.414}"),               # rounded too coarsely
        ("72", "I do not know."),                      # nothing to parse
        ("72", ""),
        ("72", "First I get 72, but \\boxed{73} is final."),  # \boxed{} wins over earlier numbers
    ],
)
def test_math_verify_rejects_wrong_answers(gold, completion):
    assert _one(rmath.math_verify, gold, completion) == 0.0


def test_math_verify_boxed_beats_a_later_number():
    assert _one(rmath.math_verify, "72", "\\boxed{72}, double-check: 70 + 2 = 72, then 73 pages") == 1.0


def test_math_verify_gold_first_asymmetry():
    # verify(gold, answer) is not symmetric: a gold inequality accepts the interval, not the reverse.
    assert _one(rmath.math_verify, "1 < x < 2", "\\boxed{(1,2)}") == 1.0
    assert _one(rmath.math_verify, "(1,2)", "\\boxed{1 < x < 2}") == 0.0
    # a gold equation accepts its bare value
    assert _one(rmath.math_verify, "x = 3", "\\boxed{3}") == 1.0
    assert _one(rmath.math_verify, "$x = 3$", "\\boxed{3}") == 1.0


# Structured golds (matrices, vectors, intervals, sets, tuples), bare as a dataset stores them: each verdict is
# the expected one and plain math-verify's on the same gold in $...$. A bare \begin{pmatrix} used to be parsed as
# written, i.e. as its last entry: the right boxed matrix scored 0 and a box with the last entry alone scored 1.
STRUCTURED = [
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", 1.0),
    (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\boxed{2}", 0.0),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"$\boxed{\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}}$", 1.0),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\boxed{\begin{pmatrix} 1 & 2 \\ 4 & 3 \end{pmatrix}}", 0.0),
    (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"\boxed{4}", 0.0),
    (r"\begin{bmatrix} 1/2 \\ -3 \end{bmatrix}", r"\boxed{\begin{pmatrix} \frac{1}{2} \\ -3 \end{pmatrix}}", 1.0),
    (r"\begin{align} x = 3 \end{align}", r"\boxed{3}", 1.0),
    (r"(1, 2]", r"\boxed{(1,2]}", 1.0),
    (r"(1, 2]", r"\boxed{(1,2)}", 0.0),
    (r"[-1, 3)", r"\boxed{[-1,3)}", 1.0),
    (r"(-\infty, 0) \cup (1, \infty)", r"\boxed{(-\infty,0)\cup(1,\infty)}", 1.0),
    (r"\{1, 2, 3\}", r"\boxed{\{3,2,1\}}", 1.0),
    (r"\{1, 2, 3\}", r"\boxed{\{1,2\}}", 0.0),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{\left(3, \frac{\pi}{2}\right)}", 1.0),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{(\frac{\pi}{2}, 3)}", 0.0),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{\frac{\pi}{2}}", 0.0),
]


@pytest.mark.parametrize("gold, completion, score", STRUCTURED)
def test_math_verify_structured_golds_agree_with_plain_math_verify(gold, completion, score):
    import math_verify as mv

    assert _one(rmath.math_verify, gold, completion) == score
    assert float(mv.verify(mv.parse(f"${gold}$"), mv.parse(completion))) == score


@pytest.mark.parametrize("gold", ["", "   ", "\\boxed{}", "???", "\\frac{"])
def test_math_verify_unparseable_gold_is_none(gold):
    assert _one(rmath.math_verify, gold, "\\boxed{1}") is None


def test_parse_gold_is_cached():
    rmath._GOLD_CACHE.clear()
    first = rmath.parse_gold("\\frac{3}{4}")
    assert first and rmath.parse_gold("\\frac{3}{4}") is first  # same tuple object: cache hit
    assert rmath.parse_gold("???") == ()
    assert not any(k[0] == "???" for k in rmath._GOLD_CACHE)  # failures are not remembered


def test_math_verify_off_the_main_thread():
    """signal.alarm only works in the main thread: the reward must disable timeouts itself there."""
    prompts = [Prompt("q", "1/2"), Prompt("q", "72"), Prompt("q", "\\sqrt{2}"), Prompt("q", "")]
    completions = ["\\boxed{0.5}", "The answer is 71.", "\\boxed{\\sqrt{2}}", "\\boxed{1}"]
    result: dict = {}

    def work():
        assert threading.current_thread() is not threading.main_thread()
        try:
            result["scores"] = rmath.math_verify(prompts, completions, [S] * 4)
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    rmath._GOLD_CACHE.clear()  # make the worker parse the golds itself
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert not t.is_alive()
    assert "error" not in result, result.get("error")
    assert result["scores"] == [1.0, 0.0, 1.0, None]
    # and the same in the main thread, where the signal-based timeouts are active
    assert rmath.math_verify(prompts, completions, [S] * 4) == [1.0, 0.0, 1.0, None]


def test_signal_timeouts_would_fail_off_the_main_thread(monkeypatch):
    """The guard above is needed: forcing the signal-based timeouts in a worker thread raises."""
    monkeypatch.setattr(rmath, "_timeouts_allowed", lambda: True)
    rmath._GOLD_CACHE.clear()
    result: dict = {}

    def work():
        try:
            result["scores"] = rmath.math_verify([Prompt("q", "3/4")], ["\\boxed{0.75}"], [S])
        except ValueError as exc:
            result["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert "thread" in str(result.get("error", "")), result


def test_math_verify_timeouts_can_be_disabled():
    assert _one(rmath.math_verify, "1/2", "\\boxed{0.5}", timeout_seconds=None) == 1.0


# ------------------------------------------------------------------------------------------ gsm8k


@pytest.mark.parametrize(
    "text, gold",
    [
        ("Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", "18"),
        ("... #### 1,450,000", "1450000"),
        ("#### -3", "-3"),
        ("72", "72"),
        (" $1,600 ", "1600"),
        ("2.5", "2.5"),
        ("no number here", None),
        ("the answer is 72", None),  # without #### the text must be a bare number
        ("#### ", None),
    ],
)
def test_extract_gsm8k_gold(text, gold):
    assert rmath.extract_gsm8k_gold(text) == gold


@pytest.mark.parametrize(
    "text, number",
    [
        ("The answer is 1,450,000.", "1450000"),
        ("x = -3", "-3"),
        ("5-3", "3"),              # a minus glued to a digit is subtraction
        ("costs $18.50 each", "18.50"),
        ("It is 18.", "18"),
        ("about .5 of it", ".5"),
        ("1{,}000 apples", "1000"),
        ("no digits", None),
        ("3 then 4 then 10", "10"),
    ],
)
def test_extract_last_number(text, number):
    assert rmath.extract_last_number(text) == number


def test_last_boxed_content_balances_braces():
    assert rmath.last_boxed_content("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert rmath.last_boxed_content("\\boxed{\\frac{1}{2}") is None
    assert rmath.last_boxed_content("no box") is None


@pytest.mark.parametrize(
    "answer, completion, score",
    [
        ("#### 18", "She makes 9 * 2 = 18 dollars.", 1.0),
        ("#### 18", "so \\boxed{18} and 3 more lines of 5", 1.0),  # boxed wins over the last number
        ("#### 18", "\\boxed{\\$18.00}", 1.0),
        ("#### 1,450,000", "The house sells for 1,450,000", 1.0),
        ("1450000", "\\boxed{1{,}450{,}000}", 1.0),
        ("#### -3", "The change is -3", 1.0),
        ("#### 18", "The answer is 19.", 0.0),
        ("#### 18", "18 apples, 19 total", 0.0),  # last number
        ("#### 18", "I cannot tell.", 0.0),
        ("#### 18", "18.0000001", 1.0),           # within 1e-6
        ("#### 18", "18.001", 0.0),
    ],
)
def test_gsm8k(answer, completion, score):
    assert _one(rmath.gsm8k, answer, completion) == score


def test_gsm8k_unscorable_gold():
    assert _one(rmath.gsm8k, "an essay without numbers", "18") is None


# ------------------------------------------------------------------------------------------ QA


def test_normalize_answer_squad():
    assert qa.normalize_answer("  The  Cat, sat! ") == "cat sat"
    assert qa.normalize_answer("An apple a day") == "apple day"
    assert qa.normalize_answer("theater") == "theater"  # articles only as whole words


def test_extract_answer_tag_or_whole():
    assert qa.extract_answer("<think>x</think><answer> Paris </answer>") == "Paris"
    assert qa.extract_answer("<answer>a</answer> then <answer>b</answer>") == "b"  # the last block
    assert qa.extract_answer("just Paris") == "just Paris"


def test_qa_exact_match():
    assert _one(qa.qa_exact_match, "Paris", "<answer>the paris.</answer>") == 1.0
    assert _one(qa.qa_exact_match, "Paris", "<answer>Paris, France</answer>") == 0.0
    assert _one(qa.qa_exact_match, "x", "NYC", meta={"answers": ["New York", "NYC"]}) == 1.0
    assert _one(qa.qa_exact_match, "", "anything") is None


def test_f1_hand_numbers():
    f1, p, r = qa.f1_score("the cat sat", "cat sat down")  # pred {cat, sat}, gold {cat, sat, down}
    assert p == pytest.approx(1.0) and r == pytest.approx(2 / 3) and f1 == pytest.approx(0.8)
    f1, p, r = qa.f1_score("w x y z", "y z q")  # 2 common: P = 1/2, R = 2/3, F1 = 4/7
    assert (p, r, f1) == pytest.approx((0.5, 2 / 3, 4 / 7))
    assert qa.f1_score("cat cat", "cat")[0] == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiplicity counts
    assert qa.f1_score("the", "a")[0] == 1.0   # both empty after normalisation
    assert qa.f1_score("the", "cat")[0] == 0.0
    assert qa.f1_score("dog", "cat")[0] == 0.0


def test_token_f1_reward_takes_the_best_gold():
    assert _one(qa.token_f1, "cat sat down", "<answer>the cat sat</answer>") == pytest.approx(0.8)
    meta = {"answers": ["dog", "cat sat down", "cat sat"]}
    assert _one(qa.token_f1, "ignored", "<answer>the cat sat</answer>", meta=meta) == pytest.approx(1.0)
    assert _one(qa.token_f1, "cat", "The cat.") == pytest.approx(1.0)  # no tags: the whole completion
    assert _one(qa.token_f1, "cat", "no tags: the cat") == pytest.approx(0.5)  # P = 1/3, R = 1
    assert _one(qa.token_f1, "", "cat") is None
    assert _one(qa.token_f1, "cat", "x", meta={"answers": []}) == 0.0  # empty list: falls back to .answer


def test_cover_exact_match():
    assert _one(qa.cover_exact_match, "New York", "<answer>It is new york city.</answer>") == 1.0
    assert _one(qa.cover_exact_match, "York New", "<answer>new york city</answer>") == 0.0  # contiguous
    assert _one(qa.cover_exact_match, "York New", "<answer>new york city</answer>", mode="tokens") == 1.0
    assert _one(qa.cover_exact_match, "Paris", "<answer>London</answer>") == 0.0
    assert _one(qa.cover_exact_match, "x", "Rome, Italy", meta={"answers": ["Milan", "Rome"]}) == 1.0
    assert _one(qa.cover_exact_match, "cat", "<answer>concatenate</answer>") == 1.0  # character-level
    assert _one(qa.cover_exact_match, "cat", "<answer>concatenate</answer>", mode="tokens") == 0.0
    assert _one(qa.cover_exact_match, "The", "the answer") is None  # gold normalises to nothing
    with pytest.raises(ValueError):
        _one(qa.cover_exact_match, "a", "b", mode="fuzzy")


# ------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<think>reason</think><answer>42</answer>", True),
        ("  <think>\nreason\n</think>\n\n<answer>\n42\n</answer>\n", True),
        ("<think></think><answer></answer>", True),                 # empty blocks pass
        ("<answer>42</answer><think>r</think>", False),             # wrong order
        ("Sure! <think>r</think><answer>42</answer>", False),        # text before
        ("<think>r</think> so <answer>42</answer>", False),          # text between
        ("<think>r</think><answer>42</answer> done", False),         # text after
        ("<think>r</think><think>s</think><answer>42</answer>", False),  # think twice
        ("<think>r <answer>1</answer></think><answer>42</answer>", False),  # answer twice
        ("<think>r</think>", False),
        ("<think>r<answer>42</answer>", False),
    ],
)
def test_think_answer_format(text, ok):
    assert _one(formats.think_answer_format, "x", text) == (1.0 if ok else 0.0)


def test_think_answer_format_prefilled_think():
    assert _one(formats.think_answer_format, "x", "r</think><answer>1</answer>", prefilled_think=True) == 1.0
    assert _one(formats.think_answer_format, "x", "<think>r</think><answer>1</answer>", prefilled_think=True) == 0.0


DOCS = "<|end_of_query|>\n\n<|begin_of_documents|>\n(1)Paris is the capital.\n(2)x\n<|end_of_documents|>\n\n"
R1S_GOOD = f"I should search. <|begin_of_query|> capital France {DOCS}So it is Paris.</think>\n\n<answer> Paris </answer>"
R1S_NO_SEARCH = "I know it.</think>\n\n<answer> Paris </answer>"


def test_r1_searcher_format():
    f = formats.r1_searcher_format
    assert _one(f, "Paris", R1S_GOOD) == 1.0
    assert _one(f, "Paris", R1S_NO_SEARCH) == 0.5                         # tags fine, no retrieval
    assert _one(f, "Paris", R1S_GOOD.replace("(1)", "")) == 0.5           # documents not numbered
    assert _one(f, "Paris", R1S_GOOD.replace("<|end_of_documents|>\n\n", "")) == 0.5  # unclosed docs
    assert _one(f, "Paris", "<think>" + R1S_GOOD) == 0.5                  # a second <think>
    assert _one(f, "Paris", R1S_GOOD + "<answer>x</answer>") == 0.5       # two answers
    assert _one(f, "Paris", R1S_GOOD.replace("</think>", "")) == 0.5      # no </think>
    assert _one(f, "Paris", "nothing") == 0.0
    assert _one(f, "Paris", "<think>" + R1S_GOOD, prefilled_think=False) == 1.0
    assert _one(f, "Paris", R1S_GOOD, prefilled_think=False) == 0.0       # must open with <think>


def test_r1_searcher_stage1_reward():
    f = formats.r1_searcher_stage1
    assert _one(f, "Paris", R1S_GOOD) == 2.0                                  # correct + retrieval + format
    assert _one(f, "London", R1S_GOOD) == 0.0                                 # wrong + retrieval + format
    assert _one(f, "Paris", R1S_NO_SEARCH) == 1.5
    assert _one(f, "Paris", "Paris is the answer.") == -1.0                   # no answer tags
    assert _one(f, "Paris France", R1S_GOOD.replace(" Paris ", " France, Paris ")) == 2.0  # token cover
    assert _one(f, "yes", "ok</think><answer>True</answer>") == 1.5           # True -> yes
    assert _one(f, "", R1S_GOOD) is None


SR1_GOOD = (
    "<think>I need the capital.</think>\n<search> capital of France </search>\n\n"
    "<information>Doc 1(Title: France) Paris is the capital of France.\n</information>\n\n"
    "<think>It is Paris.</think>\n<answer> Paris </answer>"
)


@pytest.mark.parametrize(
    "text, ok",
    [
        (SR1_GOOD, True),
        ("<think>easy</think><answer>Paris</answer>", True),
        ("<think>easy</think><answer>Paris</answer>\n", True),
        (SR1_GOOD.replace("<think>It is Paris.</think>\n", ""), False),         # answer right after information
        ("<answer>Paris</answer>", False),                                         # no think
        ("<think>a</think><search>q</search><think>b</think><answer>x</answer>", False),  # no information
        ("<think>a</think> hmm <answer>x</answer>", False),                        # text between blocks
        ("<think>a</think><answer>x</answer> trailing", False),                    # text after the answer
        ("<think>a</think><answer>x</answer><answer>y</answer>", False),           # two answers
        ("<think>a <search>q</search></think><answer>x</answer>", False),          # nested tag
        ("<think>a</think><search>q</search><information>d</information>", False),  # never answers
        ("<think>a</think><answer>x", False),                                      # unclosed
    ],
)
def test_search_r1_format(text, ok):
    assert _one(formats.search_r1_format, "x", text) == (1.0 if ok else 0.0)


def test_search_r1_em_format_scores():
    f = formats.search_r1_em_format
    assert _one(f, "Paris", SR1_GOOD) == pytest.approx(1.0)                     # valid + EM
    assert _one(f, "Paris", "Sure. <think>a</think><answer>Paris</answer>") == pytest.approx(0.8)  # invalid + EM
    assert _one(f, "Paris", SR1_GOOD.replace("<answer> Paris", "<answer> Lyon")) == pytest.approx(0.3)  # valid, gold in docs
    assert _one(f, "Berlin", SR1_GOOD) == pytest.approx(0.2)                    # valid, gold not retrieved
    assert _one(f, "Berlin", "Sure. <think>a</think><answer>Paris</answer>") == pytest.approx(0.1)  # invalid, wrong
    assert _one(f, "Berlin", "I think Paris.") == 0.0                            # invalid, no answer
    assert _one(f, "x", SR1_GOOD, meta={"answers": ["paris", "Île"]}) == pytest.approx(1.0)
    assert _one(f, "", SR1_GOOD) is None
