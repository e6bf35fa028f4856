"""Tiling: large inputs go through the backbone as overlapping tiles, stitched back on the
feature grid without seams.

Neighbouring tiles cross-fade over their overlap on the stride-4 feature grid (each tile's
weight falls linearly to its inner borders, where the backbone's zero padding changes the
features), so the stitched grid has no step at tile borders, and the anomaly map is smoothed
once over the whole input. Two ways to model the tiles' features (`TILE_STATISTICS`):

- "location": the tiles' embeddings are stitched into one grid of the whole input and every grid
  cell gets its own Gaussian (PaDiM at native resolution; memory grows with the input's area);
- "shared": one set of Gaussians per position *within a tile*, fitted on every tile of every
  image (memory set by the tile, flat in the input's size; right for homogeneous surfaces).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from padim import options
from padim.core.backbones import StagedExtractor
from padim.core.features import Embedder
from padim.errors import PadimError

TILE_STATISTICS = options.TILE_STATISTICS_CHOICES
GRID_STRIDE = 4  # the feature grid's stride in pixels
TILE_MULTIPLE = 16  # tile sides: the deepest tap's stride, so every level's grid is whole


def axis_offsets(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Tile starts along one axis: evenly spread, multiples of the grid stride, overlapping by
    at least about `overlap` pixels, the last one flush with the end."""
    if tile >= length:
        return (0,)
    step = tile - overlap
    n = math.ceil((length - tile) / step) + 1
    span = length - tile
    # floor division: no step exceeds tile - overlap, so tiles never leave a gap
    return tuple(GRID_STRIDE * (k * span // ((n - 1) * GRID_STRIDE)) for k in range(n))


@dataclass(frozen=True)
class TileGrid:
    """How an input of (height, width) is cut into tiles of (tile height, tile width)."""

    image_hw: tuple[int, int]
    tile_hw: tuple[int, int]
    overlap: int

    @classmethod
    def build(
        cls, image_hw: tuple[int, int], tile_wh: tuple[int, int], overlap: int | None = None
    ) -> TileGrid:
        """Validate and clamp (a tile side beyond the input's becomes the input's side);
        `overlap` None: a quarter of the tile's shorter side."""
        h, w = image_hw
        if h % GRID_STRIDE or w % GRID_STRIDE:
            raise PadimError(
                f"with --tile, the input's sides must be multiples of {GRID_STRIDE}; "
                f"got {w}x{h} (use --size native or a size such as "
                f"{w // 16 * 16}x{h // 16 * 16})"
            )
        tw, th = tile_wh
        if tw % TILE_MULTIPLE or th % TILE_MULTIPLE or min(tw, th) < 2 * TILE_MULTIPLE:
            raise PadimError(
                f"--tile sides must be multiples of {TILE_MULTIPLE} and at least "
                f"{2 * TILE_MULTIPLE}, got {tw}x{th}"
            )
        if overlap is None:
            overlap = min(tw, th) // 4 // GRID_STRIDE * GRID_STRIDE
        tw, th = min(tw, w), min(th, h)
        if overlap < 0 or overlap % GRID_STRIDE or overlap >= min(tw, th) // 2 + 1:
            raise PadimError(
                f"--tile-overlap must be a multiple of {GRID_STRIDE} from 0 to half the tile, "
                f"got {overlap}"
            )
        return cls((h, w), (th, tw), overlap)

    @property
    def y_offsets(self) -> tuple[int, ...]:
        return axis_offsets(self.image_hw[0], self.tile_hw[0], self.overlap)

    @property
    def x_offsets(self) -> tuple[int, ...]:
        return axis_offsets(self.image_hw[1], self.tile_hw[1], self.overlap)

    @property
    def count(self) -> int:
        return len(self.y_offsets) * len(self.x_offsets)

    @property
    def grid_hw(self) -> tuple[int, int]:
        """The stitched feature grid (the whole input's)."""
        return self.image_hw[0] // GRID_STRIDE, self.image_hw[1] // GRID_STRIDE

    @property
    def tile_grid_hw(self) -> tuple[int, int]:
        return self.tile_hw[0] // GRID_STRIDE, self.tile_hw[1] // GRID_STRIDE

    def describe(self) -> dict[str, object]:
        """JSON-ready: tile size [w, h], overlap, tiles across and down."""
        return {
            "tile": [self.tile_hw[1], self.tile_hw[0]],
            "overlap": self.overlap,
            "tiles": [len(self.x_offsets), len(self.y_offsets)],
        }


def axis_weights(offsets: tuple[int, ...], tile: int, length: int) -> list[torch.Tensor]:
    """Per tile, the blending weight of each of its grid cells along one axis: the distance to
    the tile's nearest border that faces another tile (in cells, from 0.5), capped at the
    narrowest overlap, so neighbours cross-fade linearly over their overlap (their weights sum
    to the cap) and a cell away from inner borders has the full weight. Borders on the input's
    edge do not count."""
    s, t = GRID_STRIDE, tile // GRID_STRIDE
    overlaps = [a + tile - b for a, b in itertools.pairwise(offsets)]
    cap = max(0.5, min(overlaps, default=tile) / s)
    cells = torch.arange(t, dtype=torch.float64) + 0.5
    out = []
    for k in range(len(offsets)):
        low = cells if k > 0 else torch.full_like(cells, cap)
        high = t - cells if k < len(offsets) - 1 else torch.full_like(cells, cap)
        out.append(torch.minimum(torch.minimum(low, high), torch.tensor(cap)).float())
    return out


def normalised_weights(offsets: tuple[int, ...], tile: int, length: int) -> list[torch.Tensor]:
    """`axis_weights` divided by their sum over the tiles covering each cell: along one axis
    they add up to 1 everywhere, so the products of two axes' weights do too."""
    weights = axis_weights(offsets, tile, length)
    total = torch.zeros(length // GRID_STRIDE)
    spans = [
        slice(off // GRID_STRIDE, off // GRID_STRIDE + len(w))
        for off, w in zip(offsets, weights, strict=True)
    ]
    for span, weight in zip(spans, weights, strict=True):
        total[span] += weight
    return [weight / total[span] for span, weight in zip(spans, weights, strict=True)]


class Tiler(nn.Module):
    """Cut (B, 3, H, W) inputs into (B*n, 3, th, tw) tiles and stitch (B*n, ..., h, w) grids
    of per-tile values back into (B, ..., H/4, W/4), cross-fading over the overlaps (weights:
    `axis_weights`). Static slicing and padding only: exports as a graph."""

    def __init__(self, grid: TileGrid) -> None:
        super().__init__()
        self.grid = grid
        self.ys, self.xs = grid.y_offsets, grid.x_offsets
        (h, w), (th, tw) = grid.image_hw, grid.tile_hw
        wy = normalised_weights(self.ys, th, h)
        wx = normalised_weights(self.xs, tw, w)
        for iy, weight_y in enumerate(wy):
            for ix, weight_x in enumerate(wx):
                self.register_buffer(f"weight{iy}_{ix}", weight_y[:, None] * weight_x[None, :])

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    def split(self, images: torch.Tensor) -> torch.Tensor:
        th, tw = self.grid.tile_hw
        tiles = [images[:, :, y : y + th, x : x + tw] for y in self.ys for x in self.xs]
        return torch.stack(tiles, dim=1).flatten(0, 1)

    def stitch(self, tiles: torch.Tensor) -> torch.Tensor:
        per_image = tiles.reshape(-1, self.count, *tiles.shape[1:])
        gh, gw = self.grid.grid_hw
        th, tw = self.grid.tile_grid_hw
        out = None
        for iy, y in enumerate(self.ys):
            for ix, x in enumerate(self.xs):
                k = iy * len(self.xs) + ix
                part = per_image[:, k] * getattr(self, f"weight{iy}_{ix}")
                top, left = y // GRID_STRIDE, x // GRID_STRIDE
                part = F.pad(part, (left, gw - left - tw, top, gh - top - th))
                out = part if out is None else out + part
        assert out is not None
        return out


class TiledEmbedder(nn.Module):
    """An `Embedder` run tile by tile. Output: the stitched (B, d, H/4, W/4) grid for
    "location" statistics, the (B*n, d, th/4, tw/4) tiles themselves for "shared" ones (the
    Gaussians' samples; `PadimNet` stitches their scores)."""

    def __init__(self, inner: Embedder, tiler: Tiler, statistics: str) -> None:
        super().__init__()
        if statistics not in TILE_STATISTICS:
            raise PadimError(f"unknown tile statistics {statistics!r}")
        self.inner = inner
        self.tiler = tiler
        self.shared = statistics == "shared"

    # what model files and exports read from an embedder
    @property
    def extractor(self) -> StagedExtractor:
        return self.inner.extractor

    @property
    def channel_idx(self) -> torch.Tensor:
        return self.inner.channel_idx

    def projection_matrix(self) -> torch.Tensor | None:
        return self.inner.projection_matrix()

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def grid_hw(self) -> tuple[int, int]:
        """The grid the Gaussians are fitted on."""
        return self.tiler.grid.tile_grid_hw if self.shared else self.tiler.grid.grid_hw

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        emb = self.inner(self.tiler.split(images))
        return emb if self.shared else self.tiler.stitch(emb)
