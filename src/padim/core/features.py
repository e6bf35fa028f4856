"""Patch embeddings: normalise, run the frozen backbone, keep a channel subset, align the grids."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from padim.core.backbones import Normalisation, StagedExtractor
from padim.core.graphs import in_graph


def semi_orthogonal(total: int, keep: int, seed: int) -> torch.Tensor:
    """A seeded (total, keep) matrix with orthonormal columns (QR of a Gaussian matrix): the
    semi-orthogonal embedding of Kim et al. (2021), which keeps more of the features'
    information than a random channel subset of the same size."""
    gen = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(total, keep, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return (q * torch.sign(torch.diagonal(r))).float()  # unique: positive diagonal of R


def select_channels(total: int, keep: int, seed: int) -> torch.Tensor:
    """A fixed, seeded random subset of `keep` channel indices out of `total`, sorted."""
    if keep >= total:
        return torch.arange(total)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=gen)[:keep].sort().values


def _select_channels(fmap: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """fmap[:, idx], channels-last in and out on a CPU (the embedding then reaches the
    position-major layout of the Gaussians with no transposition); a plain gather in graphs."""
    if fmap.is_contiguous(memory_format=torch.channels_last) and not in_graph():
        return fmap.permute(0, 2, 3, 1).index_select(3, idx).permute(0, 3, 1, 2)
    return fmap.index_select(1, idx)


class Embedder(nn.Module):
    """Image batch in [0, 1] (B, 3, H, W) -> patch embeddings (B, d, H/4, W/4), channels-last
    in memory like the backbone's maps (`embeddings_by_position` is then a cheap copy).

    Deeper maps are upsampled (nearest) to the first map's grid and concatenated; only the kept
    channels are gathered, before upsampling, so unused channels cost nothing. With a
    `projection` (total, k) every channel is kept and the embedding is its projection.
    """

    extractor: StagedExtractor
    mean: torch.Tensor
    std: torch.Tensor
    channel_idx: torch.Tensor

    def __init__(
        self,
        extractor: StagedExtractor,
        normalisation: Normalisation,
        layer_channels: tuple[int, ...],
        channel_idx: torch.Tensor,
        cpu_batch: int = 0,
        projection: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.cpu_batch = cpu_batch  # split CPU batches into chunks of this size (0: never)
        self.register_buffer("mean", torch.tensor(normalisation.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(normalisation.std).view(1, 3, 1, 1))
        self.register_buffer("channel_idx", channel_idx.to(torch.int64))
        self.projection: torch.Tensor | None
        self.register_buffer(
            "projection",
            None if projection is None else projection.t().contiguous()[:, :, None, None].float(),
        )  # (k, total, 1, 1): a 1x1 convolution
        offsets = [0]
        for c in layer_channels:
            offsets.append(offsets[-1] + c)
        self.n_layers = len(layer_channels)
        for i in range(self.n_layers):
            lo, hi = offsets[i], offsets[i + 1]
            local = channel_idx[(channel_idx >= lo) & (channel_idx < hi)] - lo
            self.register_buffer(f"layer_idx{i}", local.to(torch.int64))

    @property
    def dim(self) -> int:
        if self.projection is not None:
            return int(self.projection.shape[0])
        return int(self.channel_idx.numel())

    def projection_matrix(self) -> torch.Tensor | None:
        """The (total, k) projection, None for a channel subset."""
        return None if self.projection is None else self.projection[:, :, 0, 0].t().contiguous()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = self.cpu_batch
        if n and images.shape[0] > n and images.device.type == "cpu" and not in_graph():
            chunks = images.split(n)
            first = self._embed(chunks[0])  # the batch's embeddings filled in place: no list
            out = torch.empty(  # of pieces beside a concatenated copy
                (images.shape[0], *first.shape[1:]),
                dtype=first.dtype,
                device=first.device,
                memory_format=torch.channels_last,
            )
            out[: len(first)] = first
            for start, chunk in zip(range(n, images.shape[0], n), chunks[1:], strict=True):
                out[start : start + len(chunk)] = self._embed(chunk)
            return out
        return self._embed(images)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        maps = self.extractor(x)
        grid = maps[0].shape[-2:]
        parts = []
        for i, fmap in enumerate(maps):
            idx = getattr(self, f"layer_idx{i}")
            if idx.numel() == 0:
                continue
            if idx.numel() < fmap.shape[1]:
                fmap = _select_channels(fmap, idx)
            if fmap.shape[-2:] != grid:
                fmap = F.interpolate(fmap, size=grid, mode="nearest")
            parts.append(fmap)
        emb = torch.cat(parts, dim=1)
        return emb if self.projection is None else F.conv2d(emb, self.projection)
