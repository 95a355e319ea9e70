"""The multiple-choice arithmetic task of ACRE in miniature (``choice_arith``)."""

from rlfold.rewards.choice import LETTERS, parse_choice
from rlfold.tasks import TASKS
from rlfold.tasks.arithmetic import solve
from rlfold.tasks.choice_arith import choice_completion, choice_options, choice_prompt


def test_every_question_has_its_sum_among_four_distinct_options_and_the_gold_letter_names_it():
    task = TASKS.get("choice_arith")(held_out_size=50, train_size=200)
    for p in task.train + task.held_out:
        opts = p.meta["options"]
        assert len(opts) == 4 and len(set(opts)) == 4 and min(opts) >= 0
        assert str(opts[LETTERS.index(p.answer)]) == p.meta["value"] == str(solve(p.meta["a"], p.meta["b"], "+"))
        assert p.text == choice_prompt(opts, p.meta["question"]) and p.text.endswith(p.meta["question"])
    assert {p.answer for p in task.train} == set(LETTERS)  # the gold letter is not always in one place


def test_the_options_of_a_problem_do_not_depend_on_the_seed():
    a = TASKS.get("choice_arith")(held_out_size=20, seed=0)
    b = TASKS.get("choice_arith")(held_out_size=20, seed=5)
    assert [p.text for p in a.held_out] == [p.text for p in b.held_out]
    assert choice_options(58, 67, "+") == choice_options(58, 67, "+")
    assert 125 in choice_options(58, 67, "+")


def test_completion_format_and_its_parse():
    assert choice_prompt([124, 135, 125, 115], "58+67=") == "A:124 B:135 C:125 D:115 | 58+67="
    assert choice_completion(125, "C") == "125 so C"
    assert parse_choice("125 so C") == ("125 so ", "C")
    assert parse_choice("125 so Cx") == ("125 so ", "C")
    assert parse_choice("125 C") is None and parse_choice("125 so ") is None
