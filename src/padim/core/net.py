"""The torch model: embeddings -> patch scores (Mahalanobis and/or Chebyshev) -> anomaly map ->
image score."""

from __future__ import annotations

import torch
from torch import nn

from padim.core.anomaly_map import AnomalyMapper
from padim.core.features import Embedder
from padim.core.gaussian import GaussianModel, HeldOut
from padim.core.minor import MinorGaussianModel
from padim.core.neighbourhood import neighbourhood_min, offsets, shift_embeddings
from padim.core.scoring import DEFAULT_SCORE_MODE, SCORE_MODES, combine
from padim.core.tiling import TiledEmbedder
from padim.errors import PadimError


class PadimNet(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> (scores (B,), anomaly maps (B, 1, H, W)).

    One module holding every tensor inference needs, so it can be moved to a device, scripted
    or exported as a single graph. `score_mode` picks the patch score (see `scoring`).
    """

    embedder: Embedder | TiledEmbedder
    gauss_mean: torch.Tensor
    gauss_std: torch.Tensor | None
    term_stats: torch.Tensor
    roi: torch.Tensor | None  # (1, 1, H, W) bool: where to inspect; None: everywhere

    def __init__(
        self,
        embedder: Embedder | TiledEmbedder,
        gaussian: GaussianModel | MinorGaussianModel,
        sigma: float = 4.0,
        score_mode: str = DEFAULT_SCORE_MODE,
        term_stats: torch.Tensor | None = None,
        roi: torch.Tensor | None = None,
        neighbourhood: int = 0,
    ) -> None:
        super().__init__()
        self.embedder = embedder
        self.neighbourhood = neighbourhood  # cells of shift tolerance (padim.core.neighbourhood)
        self.gaussian_kind = type(gaussian)  # full or minor: its tensors are gauss_<name>
        for name, tensor in gaussian.buffers().items():
            self.register_buffer(f"gauss_{name}", tensor)
        self.register_buffer(
            "term_stats",
            torch.tensor([0.0, 1.0, 0.0, 1.0]) if term_stats is None else term_stats.float(),
        )
        self.register_buffer(
            "roi", None if roi is None else roi.bool().reshape(1, 1, *roi.shape[-2:])
        )
        self.mapper = AnomalyMapper(sigma)
        self.score_mode = DEFAULT_SCORE_MODE
        self.set_score_mode(score_mode)

    def set_score_mode(self, mode: str) -> None:
        if mode not in SCORE_MODES:
            raise PadimError(f"unknown score mode {mode!r}: use {', '.join(SCORE_MODES)}")
        if mode != "mahalanobis" and self.gauss_std is None:
            raise PadimError(
                f"score mode {mode} needs per-channel standard deviations, which "
                "this model file (written by an older padim) lacks: re-fit it"
            )
        self.score_mode = mode

    def set_gaussian(self, gaussian: GaussianModel | MinorGaussianModel) -> None:
        """Score with other Gaussians of the same kind and shape (a model updated with new
        images)."""
        if type(gaussian) is not self.gaussian_kind or gaussian.mean.shape != self.gauss_mean.shape:
            raise PadimError("the new Gaussians do not match the model's positions and channels")
        device = self.gauss_mean.device
        for name, tensor in gaussian.buffers().items():
            setattr(self, f"gauss_{name}", None if tensor is None else tensor.to(device))

    @property
    def gaussian(self) -> GaussianModel | MinorGaussianModel:
        return self.gaussian_kind(
            **{name: getattr(self, f"gauss_{name}") for name in self._gaussian_names}
        )

    @property
    def _gaussian_names(self) -> list[str]:
        """This module's own `gauss_` buffers (read on every forward: no walk of the backbone)."""
        own = self.named_buffers(recurse=False)
        return [n.removeprefix("gauss_") for n, _ in own if n.startswith("gauss_")]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_embeddings(self.embedder(images), images.shape[-2:])

    def terms(
        self, emb: torch.Tensor, mode: str | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The patch terms (B, h, w) a mode needs, Mahalanobis distances and Chebyshev terms,
        on the input's whole grid (tiles with shared statistics are stitched)."""
        mode = mode or self.score_mode
        g = self.gaussian
        maha = g.distances(emb) if mode != "chebyshev" else None
        cheb = g.chebyshev(emb) if mode != "mahalanobis" else None
        return self.stitch(maha), self.stitch(cheb)

    def stitch(self, terms: torch.Tensor | None) -> torch.Tensor | None:
        """Per-tile terms (B*n, h, w) -> the input's grid (B, H/4, W/4), when the Gaussians are
        shared by the tiles (otherwise the embeddings were stitched already)."""
        if terms is None or not isinstance(self.embedder, TiledEmbedder):
            return terms
        return self.embedder.tiler.stitch(terms) if self.embedder.shared else terms

    def stitch_held_out(self, held: HeldOut) -> HeldOut:
        """Held-out patch terms (per tile with shared statistics) on the input's grid."""
        maha, cheb = self.stitch(held.mahalanobis), self.stitch(held.chebyshev)
        assert maha is not None and cheb is not None
        return HeldOut(maha, cheb, held.neighbours)  # no neighbourhood with shared tiles

    def patch_scores(self, emb: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Patch scores (B, h, w) of a mode: against each cell's own Gaussian (the paper), or
        the smallest against the Gaussians within `neighbourhood` cells."""
        mode = mode or self.score_mode
        k = self.neighbourhood
        if k == 0:
            return combine(mode, *self.terms(emb, mode), self.term_stats)
        per_offset = (
            (o, combine(mode, *self.terms(shift_embeddings(emb, *o, k), mode), self.term_stats))
            for o in offsets(k)
        )
        return neighbourhood_min(per_offset, k)

    def held_out_patches(self, held: HeldOut, part: slice, mode: str) -> torch.Tensor:
        """Held-out images' patch scores (images `part`), with the neighbourhood when the
        model has one (each offset's terms were kept by the fit)."""
        own = combine(mode, held.mahalanobis[part], held.chebyshev[part], self.term_stats)
        if self.neighbourhood == 0 or not held.neighbours:
            return own
        near = held.neighbours
        per_offset = [((0, 0), own)] + [
            (o, combine(mode, m[part], c[part], self.term_stats)) for o, (m, c) in near.items()
        ]
        return neighbourhood_min(iter(per_offset), self.neighbourhood)

    def maps_from_terms(
        self,
        maha: torch.Tensor | None,
        cheb: torch.Tensor | None,
        size: tuple[int, int] | torch.Size,
        mode: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.maps_from_patches(
            combine(mode or self.score_mode, maha, cheb, self.term_stats), size
        )

    def maps_from_patches(
        self, patch: torch.Tensor, size: tuple[int, int] | torch.Size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and maps (B, 1, H, W) from patch scores (B, h, w)."""
        maps = self.mapper(patch, size=(int(size[0]), int(size[1])))
        if self.roi is not None:  # outside the region: the lowest value inside it (no evidence)
            inside = torch.where(self.roi, maps, torch.full_like(maps, float("inf")))
            maps = torch.where(self.roi, maps, inside.amin(dim=(2, 3), keepdim=True))
        return maps.flatten(1).amax(dim=1), maps

    def from_embeddings(
        self, emb: torch.Tensor, size: tuple[int, int] | torch.Size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and maps from precomputed embeddings."""
        return self.maps_from_patches(self.patch_scores(emb), size)
