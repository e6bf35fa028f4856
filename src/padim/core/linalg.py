"""The linear algebra of the per-position Gaussians, batched over positions: regularised
Cholesky factors, whitening matrices W = L^-1 (a triangular inverse by halves), Ledoit-Wolf
shrinkage from the covariance alone, and squared Mahalanobis distances by triangular solves."""

from __future__ import annotations

import torch

from padim.errors import PadimError

INVERSE_BLOCK = 48  # rows of the diagonal blocks a triangular inverse solves directly


def cholesky(cov: torch.Tensor, regularisation: float) -> torch.Tensor:
    """L with L L^T = cov + reg*I (c, d, d), or a clear error if that is not positive definite.
    Reads only the lower triangle of `cov` (LAPACK potrf semantics) and adds reg in place."""
    cov.diagonal(dim1=1, dim2=2).add_(regularisation)
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info.max()) > 0:
        raise PadimError(
            "covariance is not positive definite (non-finite features or regularisation too "
            "small); check the training images"
        )
    return chol


def whitening_factor(cov: torch.Tensor, regularisation: float) -> torch.Tensor:
    """W = L^-1, float32 (c, d, d): a float64 Cholesky factorisation (no LU inverse: batched
    `linalg.inv` crashes on some CPUs), then a float32 triangular inverse. W is kept in float32
    and stored in float16; inverting in float32 moves distances by about 1e-7 (relative), where
    float16 storage moves them by 1e-4, and is faster."""
    return triangular_inverse(cholesky(cov, regularisation).to(torch.float32))


def triangular_inverse(lower: torch.Tensor) -> torch.Tensor:
    """L^-1 of lower-triangular matrices (c, d, d), by halves: [[A, 0], [B, C]]^-1 =
    [[A^-1, 0], [-C^-1 B A^-1, C^-1]]. The off-diagonal blocks are batched matrix products,
    about 2x faster on a CPU than a triangular solve against the identity (which computes
    the identity's zeros too); blocks of up to INVERSE_BLOCK rows are solved directly."""
    out = torch.zeros_like(lower)
    _invert_into(lower, out)
    return out


def _invert_into(lower: torch.Tensor, out: torch.Tensor) -> None:
    d = lower.shape[-1]
    if d <= INVERSE_BLOCK:
        eye = torch.eye(d, dtype=lower.dtype, device=lower.device).expand_as(lower)
        out.copy_(torch.linalg.solve_triangular(lower, eye, upper=False))
        return
    h = d // 2
    _invert_into(lower[:, :h, :h], out[:, :h, :h])
    _invert_into(lower[:, h:, h:], out[:, h:, h:])
    out[:, h:, :h] = torch.bmm(out[:, h:, h:], torch.bmm(lower[:, h:, :h], out[:, :h, :h])).neg_()


def shrinkage_intensity(cov: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position (c,): Ledoit-Wolf intensity rho and target scale mu (target mu*I) from the
    sample covariance alone, in its Rao-Blackwellised form (Chen, Wiesel, Eldar and Hero,
    2010): the original estimator needs fourth moments that the streamed sums do not keep.
    Reads the lower triangle of `cov` (c, d, d)."""
    d = cov.shape[-1]
    diag = cov.diagonal(dim1=1, dim2=2)
    trace = diag.sum(dim=1)
    frob2 = 2 * torch.tril(cov, -1).square().sum(dim=(1, 2)) + diag.square().sum(dim=1)
    num = (n - 2) / n * frob2 + trace.square()
    den = (n + 2) * (frob2 - trace.square() / d)
    rho = torch.where(den > 0, (num / den.clamp_min(1e-300)).clamp(0, 1), torch.ones_like(den))
    return rho, trace / d


def shrink_(cov: torch.Tensor, n: int) -> torch.Tensor:
    """(1 - rho) S + rho mu I, in place; returns rho."""
    rho, mu = shrinkage_intensity(cov, n)
    cov.mul_((1 - rho)[:, None, None])
    cov.diagonal(dim1=1, dim2=2).add_((rho * mu)[:, None])
    return rho


def squared_distances(x: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """x (c, n, d), mean (c, d), L (c, d, d) -> |L^-1 (x - mean)|^2 (c, n), by a triangular
    solve (cheaper than inverting L when n < d)."""
    z = torch.linalg.solve_triangular(chol, (x - mean[:, None, :]).transpose(1, 2), upper=False)
    return z.square().sum(dim=1)


def channel_std(cov: torch.Tensor) -> torch.Tensor:
    """Per-channel standard deviations from covariances (c, d, d) -> (c, d), a copy."""
    return cov.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt().clone()


def joined(pieces: list[torch.Tensor]) -> torch.Tensor:
    """Per-chunk results (c, ...) as one (P, ...) tensor (no copy when there is one chunk)."""
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)
