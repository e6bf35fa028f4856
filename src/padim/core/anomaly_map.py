"""From patch distances to a pixel anomaly map: bilinear upsampling and Gaussian smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian with radius int(4 sigma + 0.5), as scipy and anomalib use."""
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(torch.float32)


class AnomalyMapper(nn.Module):
    """(B, h, w) patch distances -> (B, 1, H, W) smoothed map at the input resolution."""

    kernel: torch.Tensor

    def __init__(self, sigma: float = 4.0) -> None:
        super().__init__()
        self.sigma = sigma
        kernel = gaussian_kernel1d(sigma) if sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", kernel)

    def forward(self, distances: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(distances.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        if self.sigma <= 0:
            return x
        return self.smooth(x)

    def smooth(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with reflected borders (replicated if the map is too small)."""
        k = self.kernel
        pad = (k.numel() - 1) // 2
        mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
        x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode=mode), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, pad, pad), mode=mode), k.view(1, 1, -1, 1))
