"""Compact per-position Gaussians: the r directions of least variance kept exactly, the other
d - r directions as one isotropic variance (`--covariance minor`).

With Sigma + eps I = V diag(l) V^T (eigenvalues ascending) and s^2 the mean of the d - r
largest eigenvalues, the precision is approximated by

    P = I / s^2 + sum_k<=r w_k v_k v_k^T,   w_k = 1 / l_k - 1 / s^2  (>= 0)

so the squared Mahalanobis distance of z = x - mean is M^2 = |z|^2 / s^2 + sum_k w_k (v_k . z)^2:
r x d numbers per position instead of d(d+1)/2 (at r = 8 of d = 176, a tenth). Anomalies show
up along the directions good parts hardly vary in, which are the ones kept; the high-variance
directions, which the paper's precision matrix weighs least, share one variance (keeping the
large end instead, probabilistic PCA, loses accuracy: docs/compact.md). The mean of the rest
keeps the expected M^2 of good parts at the full model's. With fewer training images than
channels, more than r eigenvalues sit at the regularisation floor; the kept directions are then
a fixed choice within it (`floor_directions`), not eigh's arbitrary one. r = d is the full
model (1/s^2 = 0). The reference formula is `padim.core.reference.minor_precision`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from padim.core.gaussian import ByPosition
from padim.core.linalg import joined
from padim.errors import PadimError

INT8_LEVELS = 127  # symmetric int8 codes -127..127, one scale per row
FLOOR_TOLERANCE = 1e-6  # eigenvalues this close (relative) to the smallest share its floor
FLOAT32_TIES = 64 * 1.2e-7  # float32 eigenvalues closer than this x the largest are tied


def minor_factor(
    cov: torch.Tensor, regularisation: float, components: int, precise: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Covariances (c, d, d) (lower triangle read; reg added in place) -> unit rows V (c, r, d)
    (the r least-variance eigenvectors), their weights w = 1/l - 1/s^2 (c, r) and the isotropic
    precision 1/s^2 (c,), float64: M^2 = iso |z|^2 + sum_k w_k (v_k . z)^2.

    `precise` False (models stored in int8 or float16, whose rounding is far coarser) runs the
    eigensolver in float32, 1.7x faster, and recomputes the kept variances in float64 as
    Rayleigh quotients and s^2 from the trace: distances within 1e-3 of float64's (int8
    rounding moves them by up to 1e-2)."""
    d = cov.shape[-1]
    r = min(components, d)
    cov.diagonal(dim1=1, dim2=2).add_(regularisation)
    evals, evecs = torch.linalg.eigh(cov if precise else cov.to(torch.float32))  # ascending
    evals, evecs = evals.to(torch.float64), evecs.to(torch.float64)  # (lower triangle read)
    if not bool(torch.isfinite(evals).all()) or float(evals[:, 0].min()) <= 0:
        raise PadimError(
            "covariance is not positive definite (non-finite features or regularisation too "
            "small); check the training images"
        )
    if r == d:
        return evecs.transpose(1, 2), 1.0 / evals, evals.new_zeros(evals.shape[0])
    rows = evecs[:, :, :r].transpose(1, 2).clone()
    tolerance = evals[:, 0] * FLOOR_TOLERANCE
    if not precise:  # what float32's eigensolver cannot tell apart
        tolerance = torch.maximum(tolerance, evals[:, -1] * FLOAT32_TIES)
    tied = evals[:, r] - evals[:, 0] <= tolerance  # the floor goes past the kept
    if bool(tied.any()):
        rows[tied] = floor_directions(evals[tied], evecs[tied], r, tolerance[tied])
    if precise:
        kept, rest = evals[:, :r], evals[:, r:].mean(dim=1)
    else:
        kept = rayleigh_quotients(cov, rows)
        trace = cov.diagonal(dim1=1, dim2=2).sum(dim=1)
        rest = (trace - kept.sum(dim=1)) / (d - r)
    iso = 1.0 / rest
    return rows, 1.0 / kept - iso[:, None], iso


def rayleigh_quotients(cov: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """v^T Sigma v for unit rows (c, r, d), reading only the lower triangle of cov (c, d, d)."""
    v = rows.transpose(1, 2)  # (c, d, r)
    below = torch.tril(cov, -1) @ v
    diagonal = cov.diagonal(dim1=1, dim2=2)[:, :, None]
    return (2 * (v * below) + diagonal * v.square()).sum(dim=1)


def floor_directions(
    evals: torch.Tensor, evecs: torch.Tensor, r: int, tolerance: torch.Tensor
) -> torch.Tensor:
    """r orthonormal directions (c, r, d) in each position's floor: the eigenspace of its
    smallest eigenvalue (within `tolerance`, (c,)) when more than r directions share it (fewer
    training images than channels leave d - n + 1 of them at the regularisation). Which of
    them eigh returns is arbitrary (it changes with rounding, so with how the sums were made);
    a fixed seeded probe projected onto the floor and orthonormalised is not: merged and
    single-pass statistics then give the same model."""
    floor = evals - evals[:, :1] <= tolerance[:, None]  # (c, d)
    basis = evecs * floor[:, None, :].to(evecs.dtype)  # the floor's eigenvectors, others zeroed
    probe = floor_probe(evals.shape[1], r).to(evecs)
    q, _ = torch.linalg.qr(basis @ (basis.transpose(1, 2) @ probe))
    return q.transpose(1, 2)


def floor_probe(d: int, r: int) -> torch.Tensor:
    """The fixed (d, r) matrix `floor_directions` projects: seeded Gaussian, float64."""
    return torch.randn(d, r, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def minor_squared(
    z: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, iso: torch.Tensor
) -> torch.Tensor:
    """Centred embeddings z (c, n, d), rows (c, r, d), weights (c, r), iso (c,) -> squared
    distances iso |z|^2 + sum_k w_k (v_k . z)^2 (c, n). The rows are read once, contiguous
    (rows times the embeddings' columns)."""
    projected = torch.bmm(rows, z.transpose(1, 2)).square()  # (c, r, n)
    return iso[:, None] * z.square().sum(dim=2) + (weights[:, :, None] * projected).sum(dim=1)


def quantise_rows(
    rows: torch.Tensor, scales: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (..., d) -> int8 codes (..., d) and float32 scales (...): symmetric, one scale per
    row (the row's largest magnitude / 127), or the `scales` the rows were made with (their
    codes are then recovered exactly)."""
    if scales is None:
        scales = (rows.abs().amax(dim=-1) / INT8_LEVELS).to(torch.float32)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(rows.to(torch.float32) / safe[..., None]).clamp_(-INT8_LEVELS, INT8_LEVELS)
    return codes.to(torch.int8), scales


def dequantise_rows(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """int8 codes (..., d) and scales (...) -> float32 rows: what scoring and exports use."""
    return codes.to(torch.float32) * scales.to(torch.float32)[..., None]


def stored_rows(rows: torch.Tensor, storage: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows as the model file will hold them, back in float32 (and their int8 scales): the
    fitted model then scores exactly as the saved one does."""
    if storage == "int8":
        codes, scales = quantise_rows(rows)
        return dequantise_rows(codes, scales), scales
    if storage == "float16":
        return rows.to(torch.float16).to(torch.float32), None
    return rows.to(torch.float32), None


@dataclass
class MinorGaussianModel(ByPosition):
    """Fitted minor-component Gaussians: per position the mean, r unit rows v_k (r, d), their
    weights w_k and the isotropic precision 1/s^2; M^2 = |z|^2 / s^2 + sum_k w_k (v_k . z)^2."""

    mean: torch.Tensor  # (P, d) float32
    rows: torch.Tensor  # (P, r, d) float32 (values the file's precision holds exactly)
    weights: torch.Tensor  # (P, r) float32
    iso: torch.Tensor  # (P,) float32
    std: torch.Tensor | None = None  # (P, d) per-channel std (Chebyshev scoring)
    shrinkage_rho: torch.Tensor | None = None  # (P,) Ledoit-Wolf intensities, when fitted so
    scales: torch.Tensor | None = None  # (P, r) int8 storage: rows = codes * scales exactly

    def buffers(self) -> dict[str, torch.Tensor | None]:
        """The tensors a `PadimNet` holds (as `gauss_<name>` buffers)."""
        return {
            "mean": self.mean,
            "rows": self.rows,
            "weights": self.weights,
            "iso": self.iso,
            "std": self.std,
            "scales": self.scales,
        }

    def int8_codes(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The rows as int8 codes and scales, when they were rounded to int8 (else None)."""
        return None if self.scales is None else quantise_rows(self.rows, self.scales)

    @property
    def components(self) -> int:
        return int(self.rows.shape[1])

    def distances(self, emb: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of every patch: (B, d, h, w) -> (B, h, w)."""
        b, _, h, w = emb.shape
        pieces = [
            minor_squared(
                z,  # (c, B, d), centred
                self._part(self.rows, part),
                self._part(self.weights, part),
                self._part(self.iso, part),
            )
            for part, z in self._centred_parts(emb)
        ]
        return joined(pieces).clamp_min(0).sqrt().T.reshape(b, h, w)
