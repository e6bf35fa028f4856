"""`Sizing`: what a model's geometry costs (positions, bytes in the file and while fitting),
whether it fits in memory, and how many images go through the backbone at once.

It reads a resolved `PadimConfig` (a concrete input size) and nothing else, so the CLI can size
a fit before any work and the estimator, the model file and the Ray engine agree on the numbers.
"""

from __future__ import annotations

from typing import Any

from padim.core.backbones import get_backbone
from padim.core.features import Embedder
from padim.core.layout import BlockLayout, tril_size
from padim.core.tiling import TiledEmbedder, TileGrid, Tiler
from padim.data.preprocess import Preprocess, as_wh
from padim.errors import PadimError
from padim.memory import available_bytes
from padim.model.config import PadimConfig

EMBED_BATCH_BYTES = 768 * 2**20  # a forward batch's embeddings stay near this


class Sizing:
    """The geometry and memory of one resolved config."""

    def __init__(self, config: PadimConfig) -> None:
        self.config = config

    @property
    def preprocess(self) -> Preprocess:
        """How images are brought to the model input (and maps back)."""
        size = self.config.size
        if isinstance(size, str):
            raise PadimError(
                "the input size is chosen from the training images when fitting "
                f"(--size {size}): fit the model first"
            )
        return Preprocess(size, self.config.crop)

    @property
    def tile_grid(self) -> TileGrid | None:
        """How the input is cut into tiles (None: it is not)."""
        if self.config.tile is None:
            return None
        return TileGrid.build(
            self.preprocess.output_hw, as_wh(self.config.tile), self.config.tile_overlap
        )

    def with_tiles(self, embedder: Embedder) -> Embedder | TiledEmbedder:
        """`embedder` run tile by tile when the config tiles the input."""
        grid = self.tile_grid
        if grid is None:
            return embedder
        return TiledEmbedder(embedder, Tiler(grid), self.config.tile_statistics)

    @property
    def embedding_dim(self) -> int:
        return self.config.channels or get_backbone(self.config.backbone).default_keep

    def geometry(self) -> dict[str, Any]:
        """What the geometry costs: input, tiles, Gaussian positions, embedding size and the
        bytes of the Gaussians in the model file and while fitting (float64 sums)."""
        spec = get_backbone(self.config.backbone)
        dim = self.embedding_dim
        grid = self.tile_grid
        if grid is None:
            gh, gw = (spec.grid_side(side) for side in self.preprocess.output_hw)
        else:
            gh, gw = grid.tile_grid_hw if self.config.tile_statistics == "shared" else grid.grid_hw
        positions = gh * gw
        tril = tril_size(dim)
        keep = self.config.statistics == "keep"
        out: dict[str, Any] = {
            "input": list(self.preprocess.output_wh),
            "positions": positions,
            "embedding_dim": dim,
            "gaussian_file_bytes": positions * (self.gaussian_bytes(dim) + 2 * dim * 4),
            "fit_statistics_bytes": positions * (BlockLayout.for_dim(dim).size * 8 + dim * 16),
            "statistics_file_bytes": positions * (tril + 2 * dim) * 8 if keep else 0,
        }
        if grid is not None:
            out["tiling"] = {**grid.describe(), "statistics": self.config.tile_statistics}
        return out

    def gaussian_bytes(self, dim: int) -> int:
        """File bytes of one position's covariance part: a packed triangle (full) or the minor
        rows (+ their int8 scales) and an isotropic precision."""
        cfg = self.config
        stored = {"float16": 2, "float32": 4, "int8": 1}[cfg.storage]
        if cfg.covariance == "full":
            return tril_size(dim) * stored
        r = min(cfg.components, dim)
        return r * dim * stored + (r * 4 if cfg.storage == "int8" else 0) + 4

    def embeddings_on_disk(self, n: int) -> bool:
        """Whether a fit of `n` images sums the embeddings kept on disk (two passes, memory of
        one chunk of positions) rather than float64 sums held in memory (one pass, memory set
        by the channels alone): on disk when they take at most 4x the memory the sums would,
        and the sums are not to be kept in the model file."""
        dim = self.embedding_dim
        sums = BlockLayout.for_dim(dim).size * 8  # bytes per position in memory
        return self.config.statistics != "keep" and n * dim * 4 <= 4 * sums

    def check_memory(self, available: int | None = None, n_fit: int | None = None) -> None:
        """Refuse, before any work, a geometry whose statistics cannot fit in memory (the sums
        are float64, about 1.2x the model's Gaussians while they are factorised; kept
        statistics stay beside the Gaussians; fitted from embeddings on disk (`n_fit` images)
        only the float32 Gaussians and one chunk's sums)."""
        available = available_bytes() if available is None else available
        g = self.geometry()
        factor = 1.6 if self.config.statistics == "keep" else 1.25
        if n_fit is not None and self.embeddings_on_disk(n_fit):
            factor = 0.75
        need = int(g["fit_statistics_bytes"] * factor)
        if available is not None and need > available:
            raise PadimError(
                f"this geometry needs about {need / 2**30:.1f} GiB to fit ({g['positions']:,} "
                f"positions x {g['embedding_dim']} channels) and {available / 2**30:.1f} GiB is "
                "available: use --tile-statistics shared, fewer --channels or a smaller --size"
            )

    def effective_batch(self, batch_size: int) -> int:
        """Images per forward pass: `batch_size`, fewer when one image's embeddings are large
        (native resolution, many tiles), so a batch's embeddings stay near EMBED_BATCH_BYTES."""
        g = self.geometry()
        tiling = g.get("tiling")
        samples = 1  # embedding grids per image of the Gaussians' size: a tile's when shared
        if tiling is not None and tiling["statistics"] == "shared":
            samples = tiling["tiles"][0] * tiling["tiles"][1]
        cells = g["positions"] * samples
        per_image = cells * g["embedding_dim"] * 4 * 3  # embeddings, by position, float64 chunk
        return max(1, min(batch_size, EMBED_BATCH_BYTES // per_image))
