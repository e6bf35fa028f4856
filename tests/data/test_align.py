"""Registration onto a reference part: a synthetic part moved by a known transform is recovered
within a pixel and half a degree; a photo of something else is never aligned; the aligned photo
matches the reference, and a map goes back onto the photo where the part is."""

from __future__ import annotations

import math

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from conftest import moved, part  # noqa: E402

from padim.data.align import Aligner, Transform  # noqa: E402


def corner_error(found: Transform, truth_ref_to_photo: np.ndarray, size) -> float:
    """Largest distance (pixels) between where the found transform and the truth send the
    photo's corners onto the reference."""
    w, h = size
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64).T
    truth = np.linalg.inv(truth_ref_to_photo) @ corners
    got = found.matrix @ corners
    return float(np.abs(truth[:2] / truth[2] - got[:2] / got[2]).max())


@pytest.mark.parametrize(
    ("mode", "angle", "scale", "shift"),
    [
        ("translation", 0.0, 1.0, (7.3, -4.6)),
        ("rigid", 6.0, 1.0, (-9.2, 5.5)),
        ("rigid", -12.0, 1.0, (3.0, 11.0)),
        ("similarity", 4.0, 1.06, (5.0, -6.0)),
        ("homography", 3.0, 1.0, (4.0, 2.0)),
    ],
)
def test_a_known_motion_is_recovered(mode, angle, scale, shift):
    ref = part()
    photo, truth = moved(ref, angle, scale, shift)
    aligner = Aligner(mode).fit([ref])
    t = aligner.estimate(photo)
    assert t.ok, t.reason
    assert corner_error(t, truth, (320, 240)) < 1.0
    assert abs(t.angle - angle) < 0.5  # reported as the photo's turn
    assert math.dist(t.shift, shift) < 1.0  # and the part's centre's displacement
    assert t.quality > 0.9


def test_the_aligned_photo_matches_the_reference_and_maps_go_back():
    ref = part()
    photo, truth = moved(ref, 8.0, 1.0, (6.0, -5.0))
    aligner = Aligner("rigid").fit([ref])
    t = aligner.estimate(photo)
    aligned, covered = aligner.warp(photo, t)
    a, b = aligned[covered].astype(float), ref[covered].astype(float)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97
    assert 0.8 < covered.mean() < 1.0  # the turn leaves the corners uncovered
    spot = np.zeros(ref.shape[:2], np.float32)
    spot[118:123, 158:163] = 1.0  # a defect on the reference, at (160, 120)
    back, inside = aligner.to_photo(spot, t, (320, 240))
    ys, xs = np.nonzero(back > 0.5 * back.max())
    want = truth @ np.array([160.0, 120.0, 1.0])
    assert math.hypot(xs.mean() - want[0], ys.mean() - want[1]) < 1.0
    assert not inside.all()


def test_something_else_is_never_aligned():
    ref = part()
    other = np.random.default_rng(5).integers(0, 255, ref.shape, dtype=np.uint8)
    t = Aligner("rigid").fit([ref]).estimate(other)
    assert not t.ok and t.reason


def test_a_part_turned_beyond_the_limit_is_not_aligned():
    ref = part()
    photo, _ = moved(ref, 20.0, 1.0, (0.0, 0.0))
    t = Aligner("rigid", max_angle=10).fit([ref]).estimate(photo)
    assert not t.ok and "rotated" in t.reason


def test_the_reference_is_a_typical_part():
    ref = part()
    images = [moved(ref, a, 1.0, (0, 0))[0] for a in (-10, -3, 0, 4, 12)]
    aligner = Aligner("rigid").fit(images)
    chosen = aligner.reference_
    small = cv2.resize(cv2.cvtColor(images[2], cv2.COLOR_RGB2GRAY), chosen.shape[::-1]) / 255.0
    assert np.abs(chosen - small).mean() < 0.02  # the unturned one
