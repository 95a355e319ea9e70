"""Held-out calibration metrics: ECE and Brier on hand-computed numbers, and eval.confidence end to end."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlfold.core.registry import CONFIDENCE_PARSERS
from rlfold.core.types import FINISH_STOP, Prompt
from rlfold.rewards.calibration import answer_confidence
from rlfold.trainers.evaluate import brier_score, calibration_metrics, evaluate, expected_calibration_error


def test_ece_and_brier_four_samples_by_hand():
    # p = 0.9 right, 0.8 wrong, 0.3 wrong, 0.35 right. 10 equal-width bins:
    #   bin 9 {0.9}:       acc 1,   conf 0.9   -> (1/4) * 0.1   = 0.025
    #   bin 8 {0.8}:       acc 0,   conf 0.8   -> (1/4) * 0.8   = 0.2
    #   bin 3 {0.3, 0.35}: acc 0.5, conf 0.325 -> (2/4) * 0.175 = 0.0875
    # ECE = 0.3125. Brier = (0.1^2 + 0.8^2 + 0.3^2 + 0.65^2) / 4 = (0.01 + 0.64 + 0.09 + 0.4225) / 4 = 0.290625.
    p, y = [0.9, 0.8, 0.3, 0.35], [1, 0, 0, 1]
    assert expected_calibration_error(p, y) == pytest.approx(0.3125, abs=1e-12)
    assert brier_score(p, y) == pytest.approx(0.290625, abs=1e-12)


def test_unreadable_confidences_count_as_one_half_and_are_reported():
    # p = 0.9 right, unreadable (-> 0.5) right, 1.0 right, 0.0 wrong:
    #   bin 9 {0.9, 1.0}: acc 1, conf 0.95 -> (2/4) * 0.05 = 0.025;  bin 5 {0.5}: acc 1 -> (1/4) * 0.5 = 0.125;
    #   bin 0 {0.0}: acc 0, conf 0 -> 0.                 ECE = 0.15
    # Brier = (0.01 + 0.25 + 0 + 0) / 4 = 0.065; one answer in four unreadable.
    m = calibration_metrics([0.9, None, 1.0, 0.0], [1, 1, 1, 0])
    assert m == pytest.approx({"ece": 0.15, "brier": 0.065, "confidence_invalid": 0.25}, abs=1e-12)


def test_bin_edges_of_stated_tenths():
    # every c/10 lands in bin c (c = 10 in the last bin, with 9): one sample per confidence, all right
    p = [c / 10 for c in range(11)]
    assert expected_calibration_error(p, [1] * 11) == pytest.approx(sum(1 - x for x in p) / 11, abs=1e-12)
    # 0.3 and (1 - 0.7) (= 0.29999999999999993) share bin 3 with 0.35: one bin, acc 1/3
    pooled = [0.3, 1 - 0.7, 0.35]
    assert expected_calibration_error(pooled, [1, 0, 0]) == pytest.approx(abs(1 / 3 - sum(pooled) / 3), abs=1e-12)


def test_invariants():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, generator=g).tolist()
    y = (torch.rand(50, generator=g) < 0.5).float().tolist()
    ece = expected_calibration_error(p, y)
    assert 0.0 <= ece <= 1.0
    perm = torch.randperm(50, generator=g).tolist()
    assert expected_calibration_error([p[i] for i in perm], [y[i] for i in perm]) == pytest.approx(ece, abs=1e-12)
    # a bin whose accuracy equals its mean confidence adds nothing: calibrated within every bin
    assert expected_calibration_error([0.25] * 4 + [1.0] * 3, [1, 0, 0, 0, 1, 1, 1]) == pytest.approx(0.0, abs=1e-12)
    # one bin: ECE is |accuracy - mean confidence|; Brier of a constant 0.5 is 0.25 whatever the answers
    assert expected_calibration_error([0.5] * 4, [1, 1, 1, 0]) == pytest.approx(0.25, abs=1e-12)
    assert brier_score([0.5] * 5, [1, 0, 1, 1, 0]) == pytest.approx(0.25, abs=1e-12)
    assert brier_score([1.0, 0.0], [1, 0]) == 0.0 and brier_score([0.0, 1.0], [1, 0]) == 1.0


@pytest.mark.parametrize("p, y, msg", [([0.5], [1, 0], "1 confidences but 2"), ([], [], "at least one"),
                                       ([1.5], [1], r"\[0, 1\]"), ([-0.1], [0], r"\[0, 1\]")])
def test_bad_inputs_raise(p, y, msg):
    with pytest.raises(ValueError, match=msg):
        expected_calibration_error(p, y)


def test_answer_confidence_parser():
    assert CONFIDENCE_PARSERS.get("answer_confidence") is answer_confidence
    assert answer_confidence("Answer: 125, Confidence: 7") == 0.7
    assert answer_confidence("Answer: 12, Confidence: 10") == 1.0
    assert answer_confidence("Answer: 12, Confidence: 0") == 0.0
    for bad in ("125", "Answer: 125", "Answer: 125, Confidence: 11", "Answer: 1, Confidence: 0.8", ""):
        assert answer_confidence(bad) is None, bad


class _Fixed:
    """An engine that answers every prompt with a fixed completion (greedy and sampled alike)."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def generate(self, requests, params, seed):
        texts = [self.answers[r.prompt.text] for r in requests for _ in range(params.n)]
        return SimpleNamespace(response_texts=texts, finish_reasons=[FINISH_STOP] * len(texts), extras={},
                               size=len(texts), response_mask=torch.ones(len(texts), 3))


def test_evaluate_reads_the_stated_confidences():
    prompts = [Prompt("1+1=", "2"), Prompt("2+2=", "4"), Prompt("3+3=", "6"), Prompt("4+4=", "8")]
    engine = _Fixed({"1+1=": "Answer: 2, Confidence: 9", "2+2=": "Answer: 5, Confidence: 8",
                     "3+3=": "Answer: 7, Confidence: 3", "4+4=": "Answer: 8, Confidence: 12"})
    out = evaluate(engine, prompts, reward="answer_confidence_match", k=1, confidence="answer_confidence")
    # right at 0.9, wrong at 0.8, wrong at 0.3, right with an out-of-range confidence (read as 0.5):
    # ECE = (0.1 + 0.8 + 0.3 + 0.5) / 4 = 0.425 (four separate bins); Brier = (0.01 + 0.64 + 0.09 + 0.25) / 4
    assert out["acc"] == 0.5
    assert out["ece"] == pytest.approx(0.425, abs=1e-12)
    assert out["brier"] == pytest.approx(0.2475, abs=1e-12)
    assert out["confidence_invalid"] == 0.25
    assert "ece" not in evaluate(engine, prompts, reward="answer_confidence_match", k=1)
