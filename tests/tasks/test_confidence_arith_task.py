"""The confidence_arith task: the arith problems and split, two difficulty levels, a prompt asking for a confidence."""

from rlfold.core.registry import TASKS
from rlfold.tasks.arithmetic import format_prompt, is_held_out
from rlfold.tasks.confidence_arith import confidence_completion, confidence_prompt


def test_prompts_mix_levels_keep_the_arith_split_and_ask_for_a_confidence():
    task = TASKS.get("confidence_arith")(held_out_size=40, train_size=60, seed=3)
    assert task.name == "confidence_arith" and task.rewards == ["answer_confidence_match"]
    assert len(task.held_out) == 40 and len(task.train) == 60
    for split, held in ((task.train, False), (task.held_out, True)):
        assert {p.meta["level"] for p in split} == {2, 4}
        assert sum(p.meta["level"] == 4 for p in split) == len(split) // 2  # equal shares
        for p in split:
            a, b, op = p.meta["a"], p.meta["b"], p.meta["op"]
            assert p.text == confidence_prompt(a, b, op) == f"{a}{op}{b}=? (confidence 0-10) "
            assert p.answer == str(a + b)
            assert is_held_out(format_prompt(a, b, op), 0.1) == held
    again = TASKS.get("confidence_arith")(held_out_size=40, train_size=60, seed=4)
    assert [p.text for p in again.held_out] == [p.text for p in task.held_out]  # held-out independent of the seed


def test_completion_format_is_the_papers():
    assert confidence_completion(579, 7) == "Answer: 579, Confidence: 7"
