"""The paper's formulae (Defard et al. 2020, section 3), written as plainly as possible.

Nothing calls this in production: it is the definition the engineered code (`GaussianStats`,
`GaussianModel`, `PadimNet`) is tested against, and what `docs/design.md` shows first. Given
embeddings X of N good images, (N, d, H, W), one Gaussian per patch position (i, j):

    mu_ij    = 1/N sum_k x_kij
    Sigma_ij = 1/(N-1) sum_k (x_kij - mu_ij)(x_kij - mu_ij)^T + eps I        (eps = 0.01)
    M(x_ij)  = sqrt((x_ij - mu_ij)^T Sigma_ij^-1 (x_ij - mu_ij))

The anomaly map is M upsampled to the input size and blurred (Gaussian, sigma 4); the image
score is its maximum.
"""

from __future__ import annotations

import torch


def fit(embeddings: torch.Tensor, eps: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d, H, W) good embeddings -> means (H*W, d) and inverse covariances (H*W, d, d)."""
    n, d, h, w = embeddings.shape
    x = embeddings.double().reshape(n, d, h * w).permute(2, 0, 1)  # (P, N, d)
    mean = x.mean(dim=1)
    centred = x - mean[:, None, :]
    cov = centred.transpose(1, 2) @ centred / max(n - 1, 1) + eps * torch.eye(d, dtype=x.dtype)
    return mean, torch.linalg.inv(cov)


def distances(embeddings: torch.Tensor, mean: torch.Tensor, inv_cov: torch.Tensor) -> torch.Tensor:
    """(B, d, H, W) embeddings -> Mahalanobis distances (B, H, W) to the fitted Gaussians."""
    b, d, h, w = embeddings.shape
    x = embeddings.double().reshape(b, d, h * w).permute(2, 0, 1) - mean[:, None, :]  # (P, B, d)
    squared = torch.einsum("pbi,pij,pbj->pb", x, inv_cov, x)
    return squared.clamp_min(0).sqrt().T.reshape(b, h, w)


def neighbourhood_distances(
    embeddings: torch.Tensor, mean: torch.Tensor, inv_cov: torch.Tensor, k: int
) -> torch.Tensor:
    """Shift-tolerant scoring (`padim.core.neighbourhood`), cell by cell:
    s(x_ij) = min over |a|, |b| <= k (inside the grid) of M(x_ij) under the Gaussian of cell
    (i + a, j + b). k = 0 is `distances`."""
    b, _, h, w = embeddings.shape
    out = torch.full((b, h, w), float("inf"), dtype=torch.float64)
    x = embeddings.double()
    for i in range(h):
        for j in range(w):
            for a in range(-k, k + 1):
                for c in range(-k, k + 1):
                    if not (0 <= i + a < h and 0 <= j + c < w):
                        continue
                    p = (i + a) * w + (j + c)
                    z = x[:, :, i, j] - mean[p]
                    m = torch.einsum("bi,ij,bj->b", z, inv_cov[p], z).clamp_min(0).sqrt()
                    out[:, i, j] = torch.minimum(out[:, i, j], m)
    return out


def minor_precision(cov: torch.Tensor, r: int) -> torch.Tensor:
    """The precision `--covariance minor` scores with (`padim.core.minor`), from regularised
    covariances (P, d, d): Sigma = V diag(l) V^T (ascending), s^2 the mean of the d - r largest
    eigenvalues, P = I / s^2 + sum_k<=r (1 / l_k - 1 / s^2) v_k v_k^T. When more than r
    eigenvalues equal the smallest (within 1e-6), the v_k are a fixed orthonormal choice in its
    eigenspace: the seeded probe G (d, r) projected onto it, QR. r = d is Sigma^-1."""
    evals, evecs = torch.linalg.eigh(cov.double())
    p, d = evals.shape
    out = torch.empty(p, d, d, dtype=torch.float64)
    for i in range(p):
        lam, v = evals[i], evecs[i]
        if r == d:
            out[i] = v @ torch.diag(1.0 / lam) @ v.T
            continue
        kept = v[:, :r]
        if lam[r] <= lam[0] * (1 + 1e-6):
            floor = v[:, lam <= lam[0] * (1 + 1e-6)]
            probe = torch.randn(
                d, r, generator=torch.Generator().manual_seed(0), dtype=torch.float64
            )
            kept = torch.linalg.qr(floor @ floor.T @ probe)[0]
        iso = 1.0 / lam[r:].mean()
        out[i] = iso * torch.eye(d, dtype=torch.float64)
        for k in range(r):
            out[i] += (1.0 / lam[k] - iso) * torch.outer(kept[:, k], kept[:, k])
    return out
