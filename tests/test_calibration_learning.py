"""Rewarding Doubt from tiny-confidence-arith: held-out ECE falls by at least half (slow, seed 0).

The recipe trains only the confidence tokens (the after_marker selection, as the paper's code does).
Measured on seeds 0 1 2 (docs/calibration.md): ECE 0.265 -> 0.015 / 0.091 / 0.112. Accuracy is NOT kept
(0.555 -> 0.015 / 0.090 / 0.120): through the shared weights the answers drift to wrong ones stated with
confidence 0, so the "accuracy within 3 points" bar of issue 17 is not met and is not asserted here.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_rewarding_doubt_halves_held_out_ece():
    from learning_table import train_recipe

    first, last, _, _, task = train_recipe("rewarding_doubt", 0, 1, [])
    assert first[f"val/{task}/confidence_invalid"] == 0.0
    assert first[f"val/{task}/ece"] > 0.2  # the base's confidences say nothing about correctness
    assert last[f"val/{task}/ece"] <= 0.5 * first[f"val/{task}/ece"]
