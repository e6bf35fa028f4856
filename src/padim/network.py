"""The torch model: embeddings -> Mahalanobis distances -> anomaly map -> image score."""

from __future__ import annotations

import torch
from torch import nn

from padim.anomaly_map import AnomalyMapper
from padim.features import Embedder
from padim.gaussian import GaussianModel


class PadimNet(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> (scores (B,), anomaly maps (B, 1, H, W)).

    One module holding every tensor inference needs, so it can be moved to a device, scripted
    or exported as a single graph.
    """

    def __init__(self, embedder: Embedder, gaussian: GaussianModel, sigma: float = 4.0) -> None:
        super().__init__()
        self.embedder = embedder
        self.register_buffer("gauss_mean", gaussian.mean)
        self.register_buffer("gauss_whitening", gaussian.whitening)
        self.mapper = AnomalyMapper(sigma)

    @property
    def gaussian(self) -> GaussianModel:
        return GaussianModel(self.gauss_mean, self.gauss_whitening)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_embeddings(self.embedder(images), images.shape[-2:])

    def from_embeddings(
        self, emb: torch.Tensor, size: tuple[int, int] | torch.Size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and maps from precomputed embeddings (used while calibrating during fit)."""
        dist = self.gaussian.distances(emb)
        maps = self.mapper(dist, size=(int(size[0]), int(size[1])))
        scores = maps.flatten(1).amax(dim=1)
        return scores, maps
