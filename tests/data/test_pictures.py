"""Pictures: the numpy jet table is matplotlib's, colours sit on a fixed scale, overlays outline
the mask."""

import numpy as np
import pytest

from padim.data.pictures import BOX_COLOUR, JET_LUT, heatmap_rgb, mask_outline, render_pictures
from padim.data.regions import find_regions
from padim.normalise import ScoreScale


def test_heatmap_equals_matplotlib_jet():
    colormaps = pytest.importorskip("matplotlib").colormaps
    rng = np.random.default_rng(0)
    amap = np.concatenate([rng.uniform(-5, 25, 5000), np.linspace(0, 20, 4097)]).astype(np.float32)
    amap = amap.reshape(1, -1)
    vmin, vmax = 2.0, 18.0
    norm = np.clip((amap - vmin) / (vmax - vmin), 0.0, 1.0)
    expected = (colormaps["jet"](norm)[..., :3] * 255).astype(np.uint8)
    assert np.array_equal(heatmap_rgb(amap, vmin, vmax), expected)


def test_colours_are_fixed_by_the_normalised_score_not_the_image():
    scale = ScoreScale(10.0, 2.0)
    quiet = np.full((8, 8), 4.0, np.float32)  # a good part: far below the threshold
    loud = np.full((8, 8), 4.0, np.float32)
    loud[0, 0] = 100.0
    blank = np.zeros((3, 8, 8), np.float32)
    a = render_pictures(blank, quiet, 10.0, ["heatmap"], scale)["heatmap"]
    b = render_pictures(blank, loud, 10.0, ["heatmap"], scale)["heatmap"]
    assert np.array_equal(a[1:, 1:], b[1:, 1:])  # same value, same colour on both images
    at_threshold = render_pictures(blank, np.full((2, 2), 10.0), 10.0, ["heatmap"], scale)
    assert np.array_equal(at_threshold["heatmap"][0, 0], JET_LUT[128])  # 0.5: mid-scale
    assert np.array_equal(a[3, 3], JET_LUT[int(scale.one(4.0) * 256)])


def test_overlay_boxes_every_region():
    amap = np.zeros((40, 60), np.float32)
    amap[10:20, 30:45] = 5.0
    regions = find_regions(amap, 1.0)
    photo = np.zeros((40, 60, 3), np.uint8)
    out = render_pictures(photo, amap, 1.0, ["overlay"], ScoreScale(1.0, 1.0), regions)
    box = np.all(out["overlay"] == BOX_COLOUR, axis=-1)
    assert box[8, 28:47].all() and box[21, 28:47].all() and box[8:22, 28].all()
    assert not box[15, 37]  # the inside is left to the heat map


def test_mask_outline_is_the_boundary():
    mask = np.zeros((7, 7), bool)
    mask[2:5, 2:5] = True
    outline = mask_outline(mask)
    assert outline.sum() == 8 and not outline[3, 3]
