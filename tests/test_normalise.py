"""The normalised score: [0, 1], monotone, 0.5 exactly at the threshold."""

from __future__ import annotations

import numpy as np

from padim.normalise import ScoreScale


def test_half_at_the_threshold_monotone_and_bounded():
    scale = ScoreScale.of(160.9, 24.7)
    raw = np.concatenate([[0.0, 1e-9, 160.9, 1e6, 1e300], np.linspace(0, 400, 4001)])
    out = scale(raw)
    assert scale.one(160.9) == 0.5
    assert ((out >= 0) & (out <= 1)).all()
    ordered = np.sort(raw)
    assert (np.diff(scale(ordered)) >= 0).all()
    assert (np.diff(scale(np.linspace(100, 220, 500))) > 0).all()  # strictly, near the threshold
    assert scale.one(160.9 + 24.7) > 0.7 and scale.one(160.9 - 24.7) < 0.3


def test_old_models_without_a_spread_get_a_tenth_of_the_threshold():
    assert ScoreScale.of(50.0, None).scale == 5.0
    assert ScoreScale.of(50.0, 0.0).scale == 5.0
    assert ScoreScale.of(50.0, float("nan")).scale == 5.0
    moved = ScoreScale.of(50.0, 3.0).at(80.0)
    assert moved.one(80.0) == 0.5 and moved.scale == 3.0
