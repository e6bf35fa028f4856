"""Tile layout and stitching: whole coverage, no gaps, exact reassembly, linear cross-fades."""

from __future__ import annotations

import itertools

import pytest
import torch

from padim.core.tiling import (
    GRID_STRIDE,
    TiledEmbedder,
    TileGrid,
    Tiler,
    axis_offsets,
)
from padim.errors import PadimError

CASES = [(1136, 256, 64), (464, 256, 64), (256, 256, 64), (1000, 128, 0), (4000, 512, 64)]


@pytest.mark.parametrize(("length", "tile", "overlap"), CASES)
def test_offsets_cover_the_axis_with_the_asked_overlap(length, tile, overlap):
    offs = axis_offsets(length, tile, overlap)
    assert offs[0] == 0 and offs[-1] + min(tile, length) == length
    assert all(o % GRID_STRIDE == 0 for o in offs)
    for a, b in itertools.pairwise(offs):
        assert a < b and a + tile - b >= overlap  # never a gap, at least the overlap asked


def test_weights_cross_fade_over_the_overlaps():
    grid = TileGrid.build((464, 1136), (256, 256), 64)
    tiler = Tiler(grid)
    ones = torch.ones(grid.count, 64, 64)
    assert torch.allclose(tiler.stitch(ones), torch.ones(1, *grid.grid_hw))  # a partition of 1
    weights = tiler.weight0_1  # the second tile of the first row: inner borders left and right
    assert weights[:, 0].max() < 0.1 and weights[:, 63].max() < 0.1  # borders barely count
    assert torch.allclose(weights[:26, 32], torch.ones(26))  # the middle: this tile alone
    row = weights[10]  # tiles overlap by 80 px (20 cells) across, row 10 is in one tile row
    assert torch.allclose(row[:20].diff(), torch.full((19,), 0.05), atol=1e-6)  # a linear ramp
    assert torch.allclose(row[20:44], torch.ones(24))


def test_stitch_reassembles_a_grid_exactly():
    grid = TileGrid.build((464, 1136), (256, 256), 64)
    tiler = Tiler(grid)
    full = torch.randn(2, 5, *grid.grid_hw)
    s = GRID_STRIDE
    tiles = torch.stack(
        [full[..., y // s : y // s + 64, x // s : x // s + 64] for y in tiler.ys for x in tiler.xs],
        dim=1,
    ).flatten(0, 1)
    assert torch.allclose(tiler.stitch(tiles), full, atol=1e-6)
    assert torch.allclose(tiler.stitch(tiles[:, 0]), full[:, 0], atol=1e-6)  # no channel axis
    images = torch.randn(2, 3, 464, 1136)
    split = tiler.split(images)
    assert split.shape == (2 * grid.count, 3, 256, 256)
    assert torch.equal(split[grid.count + 1], images[1, :, 0:256, tiler.xs[1] : tiler.xs[1] + 256])


def test_a_fully_convolutional_embedder_is_tiled_without_seams():
    """With a per-pixel 'backbone' (no context), tiled and whole-image embeddings are equal."""

    class PerCell(torch.nn.Module):
        dim = 3
        extractor = torch.nn.Identity()
        channel_idx = torch.arange(3)

        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, GRID_STRIDE)

    grid = TileGrid.build((96, 192), (64, 64), 16)
    tiled = TiledEmbedder(PerCell(), Tiler(grid), "location")  # type: ignore[arg-type]
    x = torch.rand(2, 3, 96, 192)
    assert torch.allclose(tiled(x), PerCell()(x))
    shared = TiledEmbedder(PerCell(), Tiler(grid), "shared")  # type: ignore[arg-type]
    assert shared(x).shape == (2 * grid.count, 3, 16, 16) and shared.grid_hw == (16, 16)


@pytest.mark.parametrize(
    ("image_hw", "tile", "overlap", "message"),
    [
        ((462, 1130), (256, 256), 64, "multiples of 4"),
        ((464, 1136), (250, 250), 64, "multiples of 16"),
        ((464, 1136), (256, 256), 66, "--tile-overlap"),
        ((464, 1136), (256, 256), 200, "--tile-overlap"),
    ],
)
def test_bad_tilings_are_refused(image_hw, tile, overlap, message):
    with pytest.raises(PadimError, match=message):
        TileGrid.build(image_hw, tile, overlap)


def test_a_tile_larger_than_the_input_is_clamped():
    grid = TileGrid.build((64, 512), (128, 128), 32)
    assert grid.tile_hw == (64, 128) and len(grid.y_offsets) == 1
