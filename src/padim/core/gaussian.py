"""`GaussianModel`: the fitted per-position Gaussians (mean, whitening W = L^-1) and the
Mahalanobis distance |W (x - mean)|^2, fitted chunk by chunk of positions from `GaussianStats`
(`padim.core.factorise`; the compact kind is `padim.core.minor`).

The paper's formulae in a few lines are `padim.core.reference`; this module computes the same
numbers (the tests compare them) at a fraction of the memory and time: float64 sums, block-row
storage (`padim.core.layout`), batched factorisation (`padim.core.linalg`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from padim.core.graphs import in_graph
from padim.core.holdout import embeddings_by_position, positions_view
from padim.core.layout import BlockLayout, position_chunks, tril_size
from padim.core.linalg import joined
from padim.core.scoring import chebyshev_by_position
from padim.core.statistics import GaussianStats
from padim.errors import PadimError

SCORE_CHUNK_BYTES = 8 << 20  # embeddings centred and scored at once

__all__ = ["BlockLayout", "GaussianModel", "GaussianStats", "HeldOut", "tril_size"]


@dataclass
class HeldOut:
    """Patch terms (n, h, w) of held-out good images, scored by Gaussians fitted without them;
    with a neighbourhood, also each offset's terms (indexed by Gaussian cell, see
    `padim.core.neighbourhood`)."""

    mahalanobis: torch.Tensor
    chebyshev: torch.Tensor
    neighbours: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None


class ByPosition:
    """What every kind of per-position Gaussians shares: the means and per-channel standard
    deviations by position, Chebyshev terms, and the embeddings cut into chunks of positions."""

    mean: torch.Tensor  # (P, d) float32
    std: torch.Tensor | None

    @property
    def positions(self) -> int:
        return int(self.mean.shape[0])

    def chebyshev(self, emb: torch.Tensor) -> torch.Tensor:
        """Chebyshev term of every patch (see `scoring`): (B, d, h, w) -> (B, h, w)."""
        if self.std is None:
            raise PadimError(
                "this model has no per-channel standard deviations (written by "
                "an older padim): Chebyshev scoring needs a re-fit"
            )
        b, _, h, w = emb.shape
        std = self.std
        terms = [
            chebyshev_by_position(x, self._part(self.mean, part), self._part(std, part))
            for part, x in self._centred_parts(emb, centred=False)
        ]
        return joined(terms).T.reshape(b, h, w)

    def _part(self, values: torch.Tensor, part: slice) -> torch.Tensor:
        """values[part], or values itself when the part is every position (no slice op in an
        exported graph)."""
        return values if part.stop - part.start == values.shape[0] else values[part]

    def _centred_parts(
        self, emb: torch.Tensor, centred: bool = True
    ) -> Iterator[tuple[slice, torch.Tensor]]:
        """The embeddings (B, d, h, w) by position, minus the means when `centred`, a chunk of
        positions at a time: (part, (c, B, d)). Chunks of about SCORE_CHUNK_BYTES, so scoring
        memory does not grow with the batch; one piece in exported graphs and small batches."""
        b, d = emb.shape[0], emb.shape[1]
        p = self.mean.shape[0]
        step = max(1, SCORE_CHUNK_BYTES // (b * d * 4))
        if step >= p or in_graph():
            x = embeddings_by_position(emb.to(self.mean.dtype))
            yield slice(0, p), (x - self.mean[:, None, :]) if centred else x
            return
        by_pos = positions_view(emb.to(self.mean.dtype))
        for part in position_chunks(p, step):
            x = torch.empty(part.stop - part.start, b, d, dtype=self.mean.dtype, device=emb.device)
            if centred:
                yield part, torch.sub(by_pos[part], self.mean[part, None, :], out=x)
            else:
                yield part, x.copy_(by_pos[part])


@dataclass
class GaussianModel(ByPosition):
    """The fitted Gaussians: mean and whitening matrix W = L^-1 per position, in block rows.

    The squared Mahalanobis distance is |W (x - mean)|^2: a few batched matmuls per batch.
    `whitening` is block-major (`BlockLayout.block_views`); `rows` gives the position-major
    (P, S) rows that `BlockLayout.pack` makes.
    """

    mean: torch.Tensor  # (P, d) float32
    whitening: torch.Tensor  # (P*S,) float32, block rows of W, block-major
    std: torch.Tensor | None = None  # (P, d) float32 per-channel std (Chebyshev scoring)
    shrinkage_rho: torch.Tensor | None = None  # (P,) Ledoit-Wolf intensities, when fitted so

    @property
    def layout(self) -> BlockLayout:
        return BlockLayout.for_dim(int(self.mean.shape[1]))

    def buffers(self) -> dict[str, torch.Tensor | None]:
        """The tensors a `PadimNet` holds (as `gauss_<name>` buffers)."""
        return {"mean": self.mean, "whitening": self.whitening, "std": self.std}

    @classmethod
    def from_full(cls, mean: torch.Tensor, w: torch.Tensor) -> GaussianModel:
        """From full (P, d, d) lower-triangular whitening matrices."""
        p, layout = mean.shape[0], BlockLayout.for_dim(w.shape[-1])
        flat = torch.empty(p * layout.size, dtype=torch.float32, device=w.device)
        layout.write_matrices(flat, p, slice(0, p), w.float())
        return cls(mean.float(), flat)

    @classmethod
    def from_tril(cls, mean: torch.Tensor, tril: torch.Tensor) -> GaussianModel:
        """From packed lower triangles (P, d(d+1)/2), as stored in model files, converted 512
        positions at a time."""
        p = mean.shape[0]
        layout = BlockLayout.for_dim(mean.shape[1])
        flat = torch.zeros(p * layout.size, dtype=torch.float32)
        views = layout.block_views(flat, p)
        for part in position_chunks(p, 512):
            layout.tril_into(tril[part], [v[part] for v in views])
        return cls(mean.float(), flat)

    def rows(self, part: slice | None = None) -> torch.Tensor:
        """Position-major block rows (c, S) of positions `part` (all by default)."""
        part = slice(0, self.positions) if part is None else part
        return self.layout.read_rows(self.whitening, self.positions, part)

    @property
    def tril_shape(self) -> tuple[int, int]:
        return self.positions, tril_size(int(self.mean.shape[1]))

    def tril_chunks(self, dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """The packed lower triangles (P, d(d+1)/2) of the whitening matrices in `dtype`, 512
        positions at a time (a model file is written from these: no whole copy)."""
        layout, (p, t) = self.layout, self.tril_shape
        views = layout.block_views(self.whitening, p)
        for part in position_chunks(p, 512):
            out = torch.empty(part.stop - part.start, t, dtype=dtype, device=self.whitening.device)
            yield layout.tril_from([v[part] for v in views], out)

    def tril(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The packed lower triangles (P, d(d+1)/2) in `dtype`, whole."""
        return torch.cat(list(self.tril_chunks(dtype)))

    def full(self) -> torch.Tensor:
        return self.layout.unpack(self.rows())

    def distances(self, emb: torch.Tensor) -> torch.Tensor:
        """Mahalanobis distance of every patch: (B, d, h, w) -> (B, h, w)."""
        b, _, h, w = emb.shape
        views = self.layout.block_views(self.whitening, self.positions)
        pieces = []
        for part, x in self._centred_parts(emb):
            sq = torch.zeros(x.shape[0], b, dtype=x.dtype, device=x.device)
            xt = x.transpose(1, 2)  # (c, d, B)
            for (_, hi, _), block in zip(self.layout.blocks, views, strict=True):
                sq += torch.bmm(self._part(block, part), xt[:, :hi, :]).square().sum(dim=1)
            pieces.append(sq)  # (c, B)
        total = joined(pieces)
        return total.clamp_min(0).sqrt().T.reshape(b, h, w)
