"""Per-patch-position multivariate Gaussians: streamed sufficient statistics, fit, Mahalanobis.

Training never holds more than one batch of embeddings: `GaussianStats` keeps, per position,
the count and the float64 sums of (x - shift) and (x - shift)(x - shift)^T, where the shift is
the first batch's mean (so the sums stay small and the covariance does not suffer from
cancellation). Statistics from separate runs merge exactly (`merge`), which is what a
distributed fit needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from padim.errors import PadimError

DEFAULT_REGULARISATION = 0.01


def embeddings_by_position(emb: torch.Tensor) -> torch.Tensor:
    """(B, d, h, w) -> (h*w, B, d): one row block per patch position."""
    b, d, h, w = emb.shape
    return emb.permute(2, 3, 0, 1).reshape(h * w, b, d)


@dataclass
class GaussianStats:
    """Running sums per patch position, mergeable across batches, processes and machines."""

    count: int
    shift: torch.Tensor  # (P, d) float64
    sum: torch.Tensor  # (P, d) float64, sum of (x - shift)
    scatter: torch.Tensor  # (P, d, d) float64, sum of (x - shift)(x - shift)^T

    @classmethod
    def from_batch(cls, emb: torch.Tensor) -> GaussianStats:
        """Start the sums from a first batch of embeddings (B, d, h, w)."""
        x = embeddings_by_position(emb).to(torch.float64)
        p, _, d = x.shape
        shift = x.mean(dim=1)
        stats = cls(
            count=0,
            shift=shift,
            sum=torch.zeros(p, d, dtype=torch.float64, device=x.device),
            scatter=torch.zeros(p, d, d, dtype=torch.float64, device=x.device),
        )
        stats._add(x)
        return stats

    @property
    def positions(self) -> int:
        return self.shift.shape[0]

    @property
    def dim(self) -> int:
        return self.shift.shape[1]

    def update(self, emb: torch.Tensor) -> None:
        """Add a batch of embeddings (B, d, h, w) to the sums."""
        x = embeddings_by_position(emb).to(torch.float64)
        if x.shape[0] != self.positions or x.shape[2] != self.dim:
            raise PadimError(
                f"embedding shape {tuple(emb.shape)} does not match the statistics "
                f"({self.positions} positions x {self.dim} channels)"
            )
        self._add(x)

    def _add(self, x: torch.Tensor) -> None:
        x = x - self.shift[:, None, :]
        self.sum += x.sum(dim=1)
        self.scatter.baddbmm_(x.transpose(1, 2), x)
        self.count += x.shape[1]

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Exact union of two sets of statistics (re-centred on this object's shift)."""
        if other.shift.shape != self.shift.shape:
            raise PadimError("cannot merge statistics of different shapes")
        delta = other.shift - self.shift  # other's samples: x - s_self = (x - s_other) + delta
        s1 = other.sum + other.count * delta
        outer = delta[:, :, None] * other.sum[:, None, :]
        scatter = (
            other.scatter + outer + outer.transpose(1, 2)
            + other.count * delta[:, :, None] * delta[:, None, :]
        )
        return GaussianStats(
            count=self.count + other.count,
            shift=self.shift.clone(),
            sum=self.sum + s1,
            scatter=self.scatter + scatter,
        )

    def mean(self) -> torch.Tensor:
        return self.shift + self.sum / self.count

    def covariance(self, positions: slice = slice(None)) -> torch.Tensor:
        """Unbiased sample covariance (n - 1), float64, for a slice of positions."""
        if self.count < 2:
            raise PadimError(
                f"need at least 2 training images to estimate a covariance, got {self.count}"
            )
        s1 = self.sum[positions]
        centred = self.scatter[positions] - s1[:, :, None] * s1[:, None, :] / self.count
        return centred / (self.count - 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "count": torch.tensor(self.count, dtype=torch.int64),
            "shift": self.shift,
            "sum": self.sum,
            "scatter": self.scatter,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> GaussianStats:
        return cls(int(state["count"]), state["shift"], state["sum"], state["scatter"])


@dataclass
class GaussianModel:
    """The fitted Gaussians: mean and whitening matrix W = L^-1 (Sigma = L L^T) per position.

    The squared Mahalanobis distance is |W (x - mean)|^2, one batched matmul per batch.
    """

    mean: torch.Tensor  # (P, d) float32
    whitening: torch.Tensor  # (P, d, d) float32, lower triangular

    @classmethod
    def fit(
        cls,
        stats: GaussianStats,
        regularisation: float = DEFAULT_REGULARISATION,
        chunk: int = 64,
    ) -> GaussianModel:
        """Covariance + reg*I, Cholesky factor and its triangular inverse, a chunk of positions
        at a time (no LU inverse: batched `linalg.inv` crashes on some CPUs)."""
        p, d = stats.positions, stats.dim
        device = stats.shift.device
        whitening = torch.empty(p, d, d, dtype=torch.float32, device=device)
        eye = torch.eye(d, dtype=torch.float64, device=device)
        for start in range(0, p, chunk):
            part = slice(start, min(start + chunk, p))
            cov = stats.covariance(part) + regularisation * eye
            chol, info = torch.linalg.cholesky_ex(cov)
            if int(info.max()) > 0:
                raise PadimError(
                    "covariance is not positive definite (non-finite features or "
                    "regularisation too small); check the training images"
                )
            inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
            whitening[part] = inv.to(torch.float32)
        return cls(mean=stats.mean().to(torch.float32), whitening=whitening)

    def distances(self, emb: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of every patch: (B, d, h, w) -> (B, h, w)."""
        b, _, h, w = emb.shape
        x = embeddings_by_position(emb.to(self.mean.dtype)) - self.mean[:, None, :]
        z = torch.bmm(x, self.whitening.transpose(1, 2))
        dist = z.pow(2).sum(dim=-1).clamp_min(0).sqrt()  # (P, B)
        return dist.T.reshape(b, h, w)
