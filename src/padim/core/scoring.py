"""Patch scoring modes: Mahalanobis (PaDiM), Chebyshev, and their hybrids.

The hybrid Gaussian-Chebyshev PaDiM variant argues that patch embeddings are not bell-shaped and
adds a distribution-free term from Chebyshev's inequality, P(|x - mean| >= k std) <= 1/k^2:
per channel k = |x - mean| / std, and the patch term is max over channels of (1 - 1/k^2), with
non-finite values taken as 0. Modes:

- `mahalanobis`: the Mahalanobis distance (default, the paper);
- `chebyshev`: the Chebyshev term alone (in [0, 1] when some channel has k >= 1, negative below);
- `hybrid`: (Mahalanobis + Chebyshev) / 2, as published. The two terms live on very different
  scales (distances of tens to hundreds, a term below 1), so the average is dominated by the
  Mahalanobis distance;
- `hybrid-scaled`: each term standardised by the mean and standard deviation of its patch values
  on held-out good training images, then averaged, so both terms weigh the same.
"""

from __future__ import annotations

import torch

from padim import options

SCORE_MODES = options.SCORE_MODES
DEFAULT_SCORE_MODE: str = options.SCORE_MODE.default


def chebyshev_by_position(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """x (P, B, d), mean and std (P, d) -> max over channels of 1 - 1/k^2, (P, B)."""
    k = (x - mean[:, None, :]).div_(std[:, None, :])  # one temporary, worked on in place
    term = k.square_().reciprocal_().neg_().add_(1.0)  # 1 - 1/k^2
    return torch.where(torch.isfinite(term), term, 0.0).amax(dim=-1)


def term_statistics(maha: torch.Tensor, cheb: torch.Tensor) -> torch.Tensor:
    """[mean, std] of each term's patch values on good images: (4,) float32."""
    m, c = maha.double().flatten(), cheb.double().flatten()
    stats = torch.stack([m.mean(), m.std(), c.mean(), c.std()]) if m.numel() > 1 else None
    if stats is None or not torch.isfinite(stats).all():
        return torch.tensor([0.0, 1.0, 0.0, 1.0])
    stats[1] = stats[1].clamp_min(1e-12)
    stats[3] = stats[3].clamp_min(1e-12)
    return stats.float()


def combine(
    mode: str,
    maha: torch.Tensor | None,
    cheb: torch.Tensor | None,
    term_stats: torch.Tensor | None = None,
) -> torch.Tensor:
    """Patch scores of a mode from its terms (any matching shapes); a mode's terms must be
    given (see `PadimNet.terms`)."""
    if mode not in SCORE_MODES:
        raise ValueError(f"unknown score mode {mode!r}")
    if mode == "mahalanobis" and maha is not None:
        return maha
    if mode == "chebyshev" and cheb is not None:
        return cheb
    if maha is None or cheb is None:
        raise ValueError(f"score mode {mode} needs both the Mahalanobis and Chebyshev terms")
    if mode == "hybrid":
        return (maha + cheb) / 2
    s = term_stats if term_stats is not None else torch.tensor([0.0, 1.0, 0.0, 1.0])
    return ((maha - s[0]) / s[1] + (cheb - s[2]) / s[3]) / 2
