"""bench/parallel.py: a table's runs in parallel processes give the sequential results, in order."""

import operator
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from parallel import run_all  # noqa: E402


def test_two_jobs_give_the_sequential_results_in_the_order_of_the_calls():
    calls = [(i, 10 * i) for i in range(5)]
    assert list(run_all(operator.add, calls, jobs=2, threads=1)) == [11 * i for i in range(5)]
    assert list(run_all(operator.add, calls, jobs=1, threads=1)) == [11 * i for i in range(5)]


def test_a_run_that_raises_stops_the_table_with_its_error():
    with pytest.raises(ValueError, match="invalid literal"):
        list(run_all(int, [("1",), ("x",), ("3",)], jobs=2, threads=1))


def test_jobs_below_one_is_refused():
    with pytest.raises(SystemExit, match="--jobs must be at least 1"):
        list(run_all(int, [("1",)], jobs=0, threads=1))
