"""The code_tests reward's text handling: which program a completion holds, which tests a prompt has.

The reward's runs in the sandbox are tested with the sandbox, in tests/sandbox/test_runner.py.
"""

from rlfold.core.types import Prompt
from rlfold.rewards.code import extract_code, prompt_tests


def test_extract_code_and_prompt_tests():
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\ndone") == "def f():\n    return 1\n"
    assert extract_code("```py\na = 1\n```\n```python\nb = 2\n```") == "b = 2\n"
    assert extract_code("```\nc = 3\n```") == "c = 3\n"
    assert extract_code("```python\nd = 4\n") == "d = 4\n"  # cut off by the generation limit
    assert extract_code("e = 5") == "e = 5"
    assert prompt_tests(Prompt("q", "")) is None and prompt_tests(Prompt("q", "", {"tests": []})) is None
    assert prompt_tests(Prompt("q", "", {"tests": "assert 1"})) == ["assert 1"]
