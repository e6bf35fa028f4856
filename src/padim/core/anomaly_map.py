"""From patch distances to a pixel anomaly map: bilinear upsampling and Gaussian smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from padim.core.graphs import in_graph

ROW_GROUPS = 16  # channels the rows of a blur are dealt to (see `_blur_rows`)


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
        """Separable Gaussian blur of (B, 1, H, W) maps with reflected borders (replicated if
        the map is too small): rows, then columns."""
        k = self.kernel
        pad = (k.numel() - 1) // 2
        mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
        if in_graph():  # fixed shapes in graphs
            x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode=mode), k.view(1, 1, 1, -1))
            return F.conv2d(F.pad(x, (0, 0, pad, pad), mode=mode), k.view(1, 1, -1, 1))
        b, c, h, w = x.shape
        rows = _blur_rows(x.reshape(b * c, h, w), k, mode)
        return _blur_rows(rows.transpose(1, 2), k, mode).transpose(1, 2).reshape(b, c, h, w)


def _blur_rows(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """1-D blur along the last axis of (N, R, L), each row on its own: the rows are dealt to
    ROW_GROUPS channels of one depthwise convolution, which a CPU runs 2-9x faster than a
    single-channel convolution over the same pixels (a batch of 256x256 maps, or one
    2048x2048 map)."""
    n, r, length = x.shape
    pad = (kernel.numel() - 1) // 2
    rows = F.pad(x, (pad, pad), mode=mode).reshape(n * r, length + 2 * pad)
    extra = -(n * r) % ROW_GROUPS  # blank rows so the rows fill the groups evenly
    if extra:
        rows = torch.cat([rows, rows.new_zeros(extra, rows.shape[1])])
    weight = kernel.view(1, 1, 1, -1).expand(ROW_GROUPS, 1, 1, -1)
    out = F.conv2d(rows.view(1, ROW_GROUPS, -1, rows.shape[1]), weight, groups=ROW_GROUPS)
    return out.reshape(-1, length)[: n * r].view(n, r, length)
