"""Defect regions: the numpy labeller against SciPy's, region properties on hand-drawn masks,
and regions moved back to the photo through the model's geometry."""

from __future__ import annotations

import numpy as np
import pytest

from padim.data.preprocess import Preprocess
from padim.data.regions import find_regions, label_mask
from padim.normalise import ScoreScale


@pytest.mark.parametrize(
    ("shape", "density"),
    [((37, 91), 0.5), ((200, 300), 0.3), ((64, 64), 0.6), ((1, 50), 0.5), ((50, 1), 0.5)],
)
def test_labels_equal_scipy_8_connectivity(shape, density):
    ndimage = pytest.importorskip("scipy.ndimage")
    mask = np.random.default_rng(sum(shape)).random(shape) < density
    ours, n = label_mask(mask)
    theirs, n_theirs = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    assert n == n_theirs and np.array_equal(ours, theirs)


def test_diagonal_neighbours_join_and_empty_masks_have_none():
    mask = np.eye(6, dtype=bool)  # one diagonal line: one region with 8-connectivity
    assert label_mask(mask)[1] == 1
    assert label_mask(np.zeros((5, 7), bool))[1] == 0
    assert find_regions(np.zeros((5, 7)), 0.5) == []


def test_regions_of_a_hand_drawn_mask():
    amap = np.zeros((40, 60), np.float32)
    amap[5:15, 10:30] = 2.0  # a 20 x 10 scratch
    amap[8, 12] = 7.0  # its peak
    amap[30:33, 50:52] = 3.0  # a 2 x 3 pit
    amap[38, 2] = 1.5  # one stray pixel
    regions = find_regions(amap, 1.0, normalise=ScoreScale(1.0, 1.0))
    assert [(r.x, r.y, r.width, r.height, r.area) for r in regions] == [
        (10, 5, 20, 10, 200),
        (50, 30, 2, 3, 6),
        (2, 38, 1, 1, 1),
    ]  # largest peak first
    scratch = regions[0]
    assert scratch.peak == 7.0 and scratch.mean == pytest.approx((199 * 2 + 7) / 200)
    assert scratch.centroid == pytest.approx((19.5, 9.5))
    assert scratch.normalised_peak == pytest.approx(1 / (1 + np.exp(-6)))
    assert [r.area for r in find_regions(amap, 1.0, min_area=6)] == [200, 6]
    assert scratch.to_dict()["box"] == [10, 5, 20, 10]


def test_regions_are_moved_back_to_the_photo():
    """A 32x16 map of a photo squeezed from 128x64, and one centre-cropped from 40x40 to 32."""
    amap = np.zeros((16, 32), np.float32)
    amap[4:8, 10:14] = 5.0
    (r,) = Preprocess((32, 16), None).regions(amap, 1.0, (128, 64))
    assert (r.x, r.y, r.width, r.height, r.area) == (40, 16, 16, 16, 256)
    assert r.centroid == pytest.approx((47.5, 23.5))  # pixel centres: (11.5 + 0.5) * 4 - 0.5
    assert Preprocess((32, 16), None).regions(amap, 1.0, (128, 64), min_area=257) == []
    square = np.zeros((32, 32), np.float32)
    square[0:4, 0:4] = 5.0
    (c,) = Preprocess(40, 32).regions(square, 1.0, (80, 80))  # crop offset 4, scale 2
    assert (c.x, c.y, c.width, c.height) == (8, 8, 8, 8)
    native = Preprocess(40, 32).map_to_image(square, (80, 80)) > 1.0
    ys, xs = np.nonzero(native)  # the picture's mask lies within the box (bilinear spread)
    assert xs.min() >= c.x - 1 and xs.max() <= c.x + c.width and ys.min() >= c.y - 1
