"""Pictures: the numpy jet table is matplotlib's, colours sit on a fixed scale, overlays outline
the mask."""

import numpy as np
import pytest

from padim.data.pictures import colour_scale, heatmap_rgb, mask_outline, render_pictures


def test_heatmap_equals_matplotlib_jet():
    colormaps = pytest.importorskip("matplotlib").colormaps
    rng = np.random.default_rng(0)
    amap = np.concatenate([rng.uniform(-5, 25, 5000), np.linspace(0, 20, 4097)]).astype(np.float32)
    amap = amap.reshape(1, -1)
    vmin, vmax = 2.0, 18.0
    norm = np.clip((amap - vmin) / (vmax - vmin), 0.0, 1.0)
    expected = (colormaps["jet"](norm)[..., :3] * 255).astype(np.uint8)
    assert np.array_equal(heatmap_rgb(amap, vmin, vmax), expected)


def test_colours_are_fixed_by_the_threshold_not_the_image():
    lo, hi = colour_scale(10.0)
    assert (lo, hi) == (5.0, 15.0)
    quiet = np.full((8, 8), 4.0, np.float32)  # a good part: all below the scale
    loud = np.full((8, 8), 4.0, np.float32)
    loud[0, 0] = 100.0
    a = render_pictures(np.zeros((3, 8, 8), np.float32), quiet, 10.0, ["heatmap"])["heatmap"]
    b = render_pictures(np.zeros((3, 8, 8), np.float32), loud, 10.0, ["heatmap"])["heatmap"]
    assert np.array_equal(a[1:, 1:], b[1:, 1:])  # same value, same colour on both images


def test_mask_outline_is_the_boundary():
    mask = np.zeros((7, 7), bool)
    mask[2:5, 2:5] = True
    outline = mask_outline(mask)
    assert outline.sum() == 8 and not outline[3, 3]
