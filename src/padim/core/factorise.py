"""Per-position Gaussians from `GaussianStats`, chunk by chunk of positions: full whitening
matrices (`GaussianModel`, the paper) or minor components (`MinorGaussianModel`), with the
held-out good images scored by Gaussians fitted without them on the way.

Both kinds are derived from the same float64 sums, so statistics merged across batches, shards
(Ray) or `update` calls give exactly the Gaussians of one fit over all the images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from padim import options
from padim.core.gaussian import GaussianModel, HeldOut
from padim.core.holdout import HoldoutStore
from padim.core.layout import POSITION_CHUNK, BlockLayout, position_chunks
from padim.core.linalg import channel_std, cholesky, shrink_, squared_distances, whitening_factor
from padim.core.minor import MinorGaussianModel, minor_factor, minor_squared, stored_rows
from padim.core.neighbourhood import offsets
from padim.core.scoring import chebyshev_by_position
from padim.core.statistics import GaussianStats
from padim.errors import PadimError
from padim.memory import release_free_memory

TRIM_BYTES = 32 << 20  # sums freed between two returns of free memory to the system
Squared = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (c,n,d), mean) -> (c, n)
Gaussians = GaussianModel | MinorGaussianModel


def resolved_storage(covariance: str) -> str:
    """`--storage auto`: int8 rows for minor models, float16 triangles for full ones."""
    return "int8" if covariance == "minor" else "float16"


@dataclass
class Representation:
    """How the per-position Gaussians are kept: "full" (whitening W = L^-1, the paper) or
    "minor" (`components` least-variance directions exactly, the rest isotropic), and the
    file precision the minor rows are rounded to at fit (so saving changes nothing)."""

    covariance: str = options.COVARIANCE.default
    components: int = options.COMPONENTS.default
    storage: str = options.STORAGE.default

    def __post_init__(self) -> None:
        if self.covariance not in options.COVARIANCES:
            raise PadimError(
                f"unknown covariance {self.covariance!r}: use {', '.join(options.COVARIANCES)}"
            )
        if self.storage == "auto":
            self.storage = resolved_storage(self.covariance)

    def factors(self, p: int, d: int, regularisation: float, device: torch.device) -> _Factors:
        if self.covariance == "minor":
            return _MinorFactors(p, d, regularisation, device, self)
        return _FullFactors(p, d, regularisation, device)


@dataclass
class _FullFactors:
    """Whitening matrices, written into block rows as the chunks are factorised."""

    p: int
    d: int
    regularisation: float
    device: torch.device
    whitening: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.layout = BlockLayout.for_dim(self.d)
        self.whitening = torch.empty(
            self.p * self.layout.size, dtype=torch.float32, device=self.device
        )

    def scorer(self, cov: torch.Tensor) -> Squared:
        chol = cholesky(cov, self.regularisation)
        return lambda x, mean: squared_distances(x, mean, chol)

    def store(self, part: slice, cov: torch.Tensor) -> None:
        w = whitening_factor(cov, self.regularisation)
        self.layout.write_matrices(self.whitening, self.p, part, w)

    def model(self, mean: torch.Tensor, std: torch.Tensor, rhos: torch.Tensor | None) -> Gaussians:
        return GaussianModel(mean, self.whitening, std, rhos)


@dataclass
class _MinorFactors:
    """Minor-component rows and isotropic precisions, rounded to the file's precision."""

    p: int
    d: int
    regularisation: float
    device: torch.device
    rep: Representation

    def __post_init__(self) -> None:
        r = min(self.rep.components, self.d)
        self.rows = torch.empty(self.p, r, self.d, dtype=torch.float32, device=self.device)
        self.weights = torch.empty(self.p, r, dtype=torch.float32, device=self.device)
        self.iso = torch.empty(self.p, dtype=torch.float32, device=self.device)
        int8 = self.rep.storage == "int8"
        self.scales = torch.empty(self.p, r, device=self.device) if int8 else None

    def _factor(
        self, cov: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        precise = self.rep.storage == "float32"  # int8/float16 round far coarser than float32
        rows, weights, iso = minor_factor(cov, self.regularisation, self.rep.components, precise)
        stored, scales = stored_rows(rows, self.rep.storage)
        return stored, weights.float(), iso.float(), scales

    def scorer(self, cov: torch.Tensor) -> Squared:
        rows, weights, iso, _ = self._factor(cov)
        rows, weights, iso = rows.double(), weights.double(), iso.double()
        return lambda x, mean: minor_squared(x - mean[:, None, :], rows, weights, iso)

    def store(self, part: slice, cov: torch.Tensor) -> None:
        self.rows[part], self.weights[part], self.iso[part], scales = self._factor(cov)
        if self.scales is not None and scales is not None:
            self.scales[part] = scales

    def model(self, mean: torch.Tensor, std: torch.Tensor, rhos: torch.Tensor | None) -> Gaussians:
        return MinorGaussianModel(mean, self.rows, self.weights, self.iso, std, rhos, self.scales)


_Factors = _FullFactors | _MinorFactors


def shifted_chunk(holdout: HoldoutStore, part: slice, shift: int) -> torch.Tensor:
    """Held-out embeddings of positions `part` minus `shift` (flat), zeros off the grid: what
    the Gaussians of `part` score for one neighbourhood offset (cells that wrap across a row
    or leave the grid are never read back)."""
    lo, hi = part.start - shift, part.stop - shift
    a, b = max(0, lo), min(holdout.positions, hi)
    if (a, b) == (lo, hi):
        return holdout.chunk(slice(lo, hi))
    out = torch.zeros(hi - lo, holdout.n, holdout.dim)
    if a < b:
        out[a - lo : b - lo] = holdout.chunk(slice(a, b))
    return out


def fit_gaussians(
    stats: GaussianStats,
    regularisation: float = options.REGULARISATION.default,
    holdout: HoldoutStore | torch.Tensor | None = None,
    consume: bool = False,
    on_chunk: Callable[[int], None] | None = None,
    shrinkage: str = "none",
    neighbourhood: int = 0,
    representation: Representation | None = None,
) -> tuple[Gaussians, HeldOut | None]:
    """Factorise covariance + reg*I chunk by chunk of positions into `representation`
    (default: full whitening matrices).

    `holdout` (a `HoldoutStore`, or one (n, d, h, w) tensor): embeddings of good images not in
    `stats`. They are scored by the Gaussians fitted without them (their distances (n, h, w)
    are returned, for an honest threshold), then added to the statistics before the final
    factorisation, all in one pass. `consume` frees each chunk of sums once used (the stats
    are spent after), so the Gaussians grow into the memory the sums give back.
    `on_chunk(positions)` reports progress. `shrinkage` "ledoit-wolf" shrinks each covariance
    towards mu*I (`shrinkage_intensity`) before the regularisation is added. With a
    `neighbourhood` of K cells the held-out patches are also scored by the Gaussians K cells
    around them (shift-tolerant scoring, `padim.core.neighbourhood`)."""
    if shrinkage not in options.SHRINKAGES:
        raise PadimError(f"unknown shrinkage {shrinkage!r}: use {', '.join(options.SHRINKAGES)}")
    p, d = stats.positions, stats.dim
    device = stats.shift.device
    factors = (representation or Representation("full")).factors(p, d, regularisation, device)
    mean = torch.empty(p, d, dtype=torch.float64, device=device)
    if isinstance(holdout, torch.Tensor):
        holdout = HoldoutStore.from_tensor(holdout)
    if holdout is not None and holdout.n == 0:
        holdout = None
    n_hold = 0 if holdout is None else holdout.n
    held_sq = torch.empty(p, n_hold, dtype=torch.float64, device=device)
    held_cheb = torch.empty_like(held_sq)
    shifts = [o for o in offsets(neighbourhood)][1:] if holdout is not None else []
    near = {o: (torch.empty(p, n_hold), torch.empty(p, n_hold)) for o in shifts}
    std = torch.empty(p, d, dtype=torch.float32, device=device)
    shrinking = shrinkage == "ledoit-wolf"
    rhos = torch.zeros(p, dtype=torch.float64, device=device) if shrinking else None
    count = stats.count
    scratch = torch.zeros(POSITION_CHUNK, d, d, dtype=torch.float64, device=device)
    sums_bytes = BlockLayout.for_dim(d).size * 8  # per position, freed as chunks are spent
    trim_every = max(1, TRIM_BYTES // (POSITION_CHUNK * sums_bytes))
    for i, part in enumerate(position_chunks(p)):
        if holdout is not None:
            held_part = holdout.chunk(part).to(device)  # (c, n, d)
            cov = stats._chunk_covariance(i, part, count, scratch)
            chunk_std = channel_std(cov).float()
            if shrinking:
                shrink_(cov, count)
            squared = factors.scorer(cov)
            chunk_mean = stats.shift[part] + stats.sum[part] / count
            held_sq[part] = squared(held_part.to(torch.float64), chunk_mean)
            held_cheb[part] = chebyshev_by_position(held_part, chunk_mean.float(), chunk_std)
            for (dy, dx), (near_sq, near_cheb) in near.items():
                moved = shifted_chunk(holdout, part, dy * holdout.grid[1] + dx).to(device)
                near_sq[part] = squared(moved.double(), chunk_mean).cpu().float()
                near_cheb[part] = chebyshev_by_position(moved, chunk_mean.float(), chunk_std).cpu()
            stats._add_chunk(i, part, held_part)
        total = count + n_hold
        cov = stats._chunk_covariance(i, part, total, scratch, spend=consume)
        std[part] = channel_std(cov).to(torch.float32)
        if rhos is not None:
            rhos[part] = shrink_(cov, total)
        factors.store(part, cov)
        mean[part] = stats.shift[part] + stats.sum[part] / total
        if consume:
            stats.scatter[i] = stats.scatter[i].new_empty(0)
            if i % trim_every == trim_every - 1:
                release_free_memory()
        if on_chunk is not None:
            on_chunk(part.stop - part.start)
    stats.count = count + n_hold
    return factors.model(mean.to(torch.float32), std, rhos), _held_out(
        holdout, held_sq, held_cheb, near
    )


def _held_out(
    holdout: HoldoutStore | None,
    held_sq: torch.Tensor,
    held_cheb: torch.Tensor,
    near: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]],
) -> HeldOut | None:
    """The held-out terms by image, (n, h, w), from the by-position buffers (P, n)."""
    if holdout is None:
        return None
    n, (h, w) = holdout.n, holdout.grid
    held_out = HeldOut(
        held_sq.clamp_min(0).sqrt().T.reshape(n, h, w).to(torch.float32),
        held_cheb.T.reshape(n, h, w).to(torch.float32),
    )
    if near:
        held_out.neighbours = {
            o: (sq.clamp_min(0).sqrt().T.reshape(n, h, w), c.T.reshape(n, h, w))
            for o, (sq, c) in near.items()
        }
    return held_out
