"""Compact per-position Gaussians: r directions kept exactly, the other d - r as one
isotropic variance (`--covariance minor`).

With Sigma + eps I = V diag(l) V^T (eigenvalues ascending), r eigenvectors are kept: `low`
from the small-variance end and r - low from the large end; the d - r in the middle share one
variance s^2 (the mean of theirs). The precision is approximated by

    P = I / s^2 + sum_k w_k v_k v_k^T,   w_k = 1 / l_k - 1 / s^2

so the squared Mahalanobis distance of z = x - mean is M^2 = |z|^2 / s^2 + sum_k w_k (v_k . z)^2:
r x d numbers per position instead of d(d+1)/2 (at r = 8 of d = 176, a tenth). `low` is chosen
per position so the middle is as isotropic as it gets (`most_isotropic_split`): with more
training images than channels that is nearly always every kept direction from the small end,
the minor components anomalies show up in (keeping the large end instead, probabilistic PCA,
loses accuracy: docs/compact.md); with fewer images the eigenvalues have a flat floor at the
regularisation, which then stays whole in the middle with its exact precision. r = d is the
full model (1/s^2 = 0). The reference formula is `padim.core.reference.minor_precision`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from padim.core.gaussian import ByPosition
from padim.core.linalg import joined
from padim.errors import PadimError

INT8_LEVELS = 127  # symmetric int8 codes -127..127, one scale per row


def minor_factor(
    cov: torch.Tensor, regularisation: float, components: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Covariances (c, d, d) (lower triangle read; reg added in place) -> unit rows V (c, r, d),
    their signed weights w (c, r) and the isotropic precision (c,), float64:
    M^2 = iso |z|^2 + sum_k w_k (v_k . z)^2."""
    d = cov.shape[-1]
    r = min(components, d)
    cov.diagonal(dim1=1, dim2=2).add_(regularisation)
    evals, evecs = torch.linalg.eigh(cov)  # ascending; reads the lower triangle
    if not bool(torch.isfinite(evals).all()) or float(evals[:, 0].min()) <= 0:
        raise PadimError(
            "covariance is not positive definite (non-finite features or regularisation too "
            "small); check the training images"
        )
    if r == d:
        return evecs.transpose(1, 2), 1.0 / evals, evals.new_zeros(evals.shape[0])
    low = most_isotropic_split(evals, r)  # (c,) directions kept from the small end
    order = torch.arange(d, device=evals.device)
    index = torch.where(order[None, :r] < low[:, None], order[None, :r], order[None, :r] + d - r)
    middle = (order[None, :] >= low[:, None]) & (order[None, :] < (low + d - r)[:, None])
    iso = 1.0 / ((evals * middle).sum(dim=1) / (d - r))
    kept = torch.gather(evals, 1, index)
    rows = torch.gather(evecs, 2, index[:, None, :].expand(-1, d, -1)).transpose(1, 2)
    return rows, 1.0 / kept - iso[:, None], iso


def most_isotropic_split(evals: torch.Tensor, r: int) -> torch.Tensor:
    """Per position (c,): how many of the r kept directions come from the small-variance end
    (the rest from the large end) so that the d - r directions left in the middle, which share
    one variance, have the least spread of log-variances. Ties go to the small end (the
    directions anomalies show up in). Training sets with fewer images than channels have a
    flat floor of eigenvalues at the regularisation: this keeps the floor in the middle (its
    exact precision) instead of an arbitrary few of its directions."""
    c, d = evals.shape
    logs = torch.cat([evals.new_zeros(c, 1), evals.log().cumsum(dim=1)], dim=1)
    squares = torch.cat([evals.new_zeros(c, 1), evals.log().square().cumsum(dim=1)], dim=1)
    m = d - r
    spreads = []
    for low in range(r, -1, -1):  # prefer more from the small end on ties
        total, total2 = logs[:, low + m] - logs[:, low], squares[:, low + m] - squares[:, low]
        spreads.append(total2 / m - (total / m).square())
    best = torch.stack(spreads, dim=1).argmin(dim=1)  # first minimum: the largest `low`
    return r - best


def minor_squared(
    x: torch.Tensor,
    mean: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    iso: torch.Tensor,
) -> torch.Tensor:
    """x (c, n, d), mean (c, d), rows (c, r, d), weights (c, r), iso (c,) -> squared distances
    (c, n)."""
    z = x - mean[:, None, :]
    projected = torch.bmm(rows, z.transpose(1, 2)).square()  # (c, r, n)
    return iso[:, None] * z.square().sum(dim=-1) + (weights[:, :, None] * projected).sum(dim=1)


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

    kind = "minor"

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
        """Mahalanobis distance of every patch: (B, d, h, w) -> (B, h, w). Each chunk reads its
        rows once, contiguous (rows times the embeddings' columns)."""
        b, _, h, w = emb.shape
        pieces = []
        for part, x in self._centred_parts(emb):  # (c, B, d)
            rows, weights = self._part(self.rows, part), self._part(self.weights, part)
            projected = torch.bmm(rows, x.transpose(1, 2)).square()  # (c, r, B)
            iso = self._part(self.iso, part)[:, None] * x.square().sum(dim=2)
            pieces.append(iso + (weights[:, :, None] * projected).sum(dim=1))
        return joined(pieces).clamp_min(0).sqrt().T.reshape(b, h, w)
