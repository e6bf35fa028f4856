"""Per-patch-position multivariate Gaussians: streamed sufficient statistics, fit, Mahalanobis.

Training never holds more than one batch of embeddings: `GaussianStats` keeps, per position,
the count and the float64 sums of (x - shift) and of the lower block rows of
(x - shift)(x - shift)^T (see `BlockLayout`: 56 % of the memory and the arithmetic of full
matrices, no gathers), where the shift is the first batch's mean (so the sums stay small and
the covariance does not suffer from cancellation). The sums live in chunks of positions, so
fitting can free each chunk as soon as its Gaussians are factorised. Statistics from separate
runs merge exactly (`merge`), which is what a distributed fit needs.

`GaussianModel` keeps the whitening matrix W = L^-1 (Sigma = L L^T) per position. W is lower
triangular, so it is stored as block rows (rows r_i..r_i+1, columns 0..r_i+1): a little over
half of a full matrix, and scoring one image reads half the bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from padim import options
from padim.core.graphs import in_graph
from padim.core.holdout import HoldoutStore, embeddings_by_position, positions_view
from padim.core.scoring import chebyshev_by_position
from padim.errors import PadimError
from padim.memory import release_free_memory

DEFAULT_REGULARISATION: float = options.REGULARISATION.default
POSITION_CHUNK = 64  # positions per chunk of sums / factorisation
STORE_READ_BYTES = 32 << 20  # embeddings read from a store at once (float64)
SCORE_CHUNK_BYTES = 8 << 20  # embeddings centred and scored at once
TRIM_BYTES = 32 << 20  # sums freed between two returns of free memory to the system
INVERSE_BLOCK = 48  # rows of the diagonal blocks a triangular inverse solves directly


def tril_size(d: int) -> int:
    """Entries in the lower triangle of a d x d matrix (diagonal included)."""
    return d * (d + 1) // 2


def position_chunks(p: int, size: int = POSITION_CHUNK) -> list[slice]:
    return [slice(s, min(s + size, p)) for s in range(0, p, size)]


def _add_scatter(buf: torch.Tensor, xc: torch.Tensor) -> None:
    """Add the products of centred embeddings xc (c, n, d) to the block rows (c, S) of their
    scatter matrices' lower part, in place."""
    xt = xc.transpose(1, 2)
    layout = BlockLayout.for_dim(xc.shape[-1])
    for (lo, hi, _), block in zip(layout.blocks, layout.views(buf), strict=True):
        block.baddbmm_(xt[:, lo:hi, :], xc[:, :, :hi])  # (c, m, hi): rows lo..hi, columns ..hi


@dataclass
class GaussianStats:
    """Running sums per patch position, mergeable across batches, processes and machines."""

    count: int
    shift: torch.Tensor  # (P, d) float64
    sum: torch.Tensor  # (P, d) float64, sum of (x - shift)
    scatter: list[torch.Tensor]  # per position chunk (c, S) float64: block rows (BlockLayout)
    # of the lower part of sum (x - shift)(x - shift)^T; whole (c, d, d) matrices for a store
    store: HoldoutStore | None = None  # embeddings on disk: the chunks' sums made when needed
    made: set[int] = field(default_factory=set)  # chunks made from the store

    @classmethod
    def from_store(cls, store: HoldoutStore) -> GaussianStats:
        """Statistics of embeddings kept on disk by position (`HoldoutStore`): each chunk's
        sums are computed when the factorisation reaches it (exact two-pass: shift = the
        chunk's mean) and freed after, so the whole set of float64 sums never exists at once.
        Fit memory is then one chunk's, whatever the number of images. Only one chunk
        exists at a time, so its scatter matrices are kept whole: one matrix product per
        position (faster than the block rows' several) and nothing to unpack."""
        p, d = store.positions, store.dim
        f64 = torch.float64
        return cls(
            count=store.n,
            shift=torch.zeros(p, d, dtype=f64),
            sum=torch.zeros(p, d, dtype=f64),
            scatter=[torch.empty(0, dtype=f64) for _ in position_chunks(p)],
            store=store,
        )

    def _ensure(self, i: int, part: slice) -> None:
        """Make chunk i's sums from the store, the first time they are needed, a few positions
        at a time (their float64 embeddings at most STORE_READ_BYTES, whatever the number of
        images)."""
        if self.store is None or i in self.made:
            return
        self.made.add(i)
        d = self.dim
        chunk = torch.empty(part.stop - part.start, d, d, dtype=torch.float64)
        step = max(1, STORE_READ_BYTES // (self.store.n * d * 8))
        for start in range(part.start, part.stop, step):
            sub = slice(start, min(start + step, part.stop))
            x = self.store.chunk(sub).to(torch.float64)  # (c, n, d)
            self.shift[sub] = x.mean(dim=1)
            xc = x.sub_(self.shift[sub, None, :])
            self.sum[sub] = xc.sum(dim=1)
            torch.bmm(
                xc.transpose(1, 2), xc, out=chunk[sub.start - part.start : sub.stop - part.start]
            )
        self.scatter[i] = chunk

    @classmethod
    def from_batch(cls, emb: torch.Tensor) -> GaussianStats:
        """Start the sums from a first batch of embeddings (B, d, h, w)."""
        x = embeddings_by_position(emb)
        p, _, d = x.shape
        f64, device = torch.float64, x.device
        stats = cls(
            count=0,
            shift=x.to(f64).mean(dim=1),
            sum=torch.zeros(p, d, dtype=f64, device=device),
            scatter=[
                torch.zeros(c.stop - c.start, BlockLayout.for_dim(d).size, dtype=f64, device=device)
                for c in position_chunks(p)
            ],
        )
        stats._add(x)
        return stats

    @classmethod
    def from_batches(cls, embeddings: Iterable[torch.Tensor]) -> GaussianStats:
        """The sums over a stream of embedding batches (B, d, h, w), one batch at a time."""
        stats: GaussianStats | None = None
        for emb in embeddings:
            if stats is None:
                stats = cls.from_batch(emb)
            else:
                stats.update(emb)
        if stats is None:
            raise PadimError("no training images in the statistics")
        return stats

    @property
    def positions(self) -> int:
        return self.shift.shape[0]

    @property
    def dim(self) -> int:
        return self.shift.shape[1]

    def update(self, emb: torch.Tensor) -> None:
        """Add a batch of embeddings (B, d, h, w) to the sums."""
        if emb.shape[1] != self.dim or emb.shape[2] * emb.shape[3] != self.positions:
            raise PadimError(
                f"embedding shape {tuple(emb.shape)} does not match the statistics "
                f"({self.positions} positions x {self.dim} channels)"
            )
        self._add(embeddings_by_position(emb))

    def _add(self, x: torch.Tensor) -> None:
        """x: (P, B, d) embeddings by position."""
        for i, part in enumerate(position_chunks(self.positions)):
            self._add_chunk(i, part, x[part])
        self.count += x.shape[1]
        release_free_memory()  # the batch's temporaries, before the next batch arrives

    def _add_chunk(self, i: int, part: slice, x: torch.Tensor) -> None:
        """Add (c, B, d) embeddings to chunk i's sums (the caller updates `count`)."""
        self._ensure(i, part)
        xc = x.to(torch.float64) - self.shift[part, None, :]
        self.sum[part] += xc.sum(dim=1)
        if self.scatter[i].dim() == 3:  # whole matrices (from a store)
            self.scatter[i].baddbmm_(xc.transpose(1, 2), xc)
        else:
            _add_scatter(self.scatter[i], xc)

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Exact union of two sets of statistics (re-centred on this object's shift)."""
        if other.shift.shape != self.shift.shape:
            raise PadimError("cannot merge statistics of different shapes")
        delta = other.shift - self.shift  # other's samples: x - s_self = (x - s_other) + delta
        layout = BlockLayout.for_dim(self.dim)
        scatter = []
        for i, part in enumerate(position_chunks(self.positions)):
            dl, os = delta[part], other.sum[part]
            # (x + delta)(x + delta)^T summed: scatter + delta s^T + s delta^T + n delta delta^T
            cross = (
                dl[:, :, None] * os[:, None, :]
                + os[:, :, None] * dl[:, None, :]
                + other.count * dl[:, :, None] * dl[:, None, :]
            )
            scatter.append(self.scatter[i] + other.scatter[i] + layout.pack(cross))
        return GaussianStats(
            count=self.count + other.count,
            shift=self.shift.clone(),
            sum=self.sum + other.sum + other.count * delta,
            scatter=scatter,
        )

    def mean(self) -> torch.Tensor:
        return self.shift + self.sum / self.count

    def copy(self) -> GaussianStats:
        """An independent copy (fitting adds held-out images to the statistics it is given)."""
        return GaussianStats(
            self.count, self.shift.clone(), self.sum.clone(), [c.clone() for c in self.scatter]
        )

    def _chunk_covariance(
        self,
        i: int,
        part: slice,
        count: int,
        scratch: torch.Tensor | None = None,
        spend: bool = False,
    ) -> torch.Tensor:
        """Chunk i's covariance (c, d, d). Given a `scratch` buffer (at least (c, d, d)), it is
        written there with only the lower triangle meaningful (all a Cholesky factorisation
        reads; the rest is left over from earlier use): no new memory per chunk. `spend`
        lets whole matrices (from a store) become the covariance in place: the chunk's sums
        are gone after."""
        if count < 1:
            raise PadimError("no training images in the statistics")
        self._ensure(i, part)
        s1 = self.sum[part]
        layout = BlockLayout.for_dim(self.dim)
        sums, c = self.scatter[i], part.stop - part.start
        if sums.dim() == 3 and spend:
            scatter = sums
        elif sums.dim() == 3:
            scatter = sums.clone() if scratch is None else scratch[:c].copy_(sums)
        elif scratch is None:
            scatter = layout.unpack_symmetric(sums)
        else:
            scatter = layout.unpack_blocks(sums, out=scratch[:c])
        scatter.baddbmm_(s1[:, :, None], s1[:, None, :], alpha=-1.0 / count)
        return scatter.div_(max(count - 1, 1))  # one image: zero sample covariance

    def covariance(self) -> torch.Tensor:
        """Unbiased sample covariance (n - 1), float64, (P, d, d): for tests and small models."""
        return torch.cat(
            [
                self._chunk_covariance(i, part, self.count)
                for i, part in enumerate(position_chunks(self.positions))
            ]
        )

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The sums as stored in model files: float64, the scatter as packed lower triangles
        (P, d(d+1)/2) rather than the in-memory block rows."""
        layout = BlockLayout.for_dim(self.dim)
        return {
            "count": torch.tensor([self.count], dtype=torch.int64),
            "shift": self.shift,
            "sum": self.sum,
            "scatter_tril": torch.cat(
                [
                    layout.tril_from(layout.views(c), c.new_empty(c.shape[0], tril_size(self.dim)))
                    for c in self.scatter
                ]
            ),
        }

    @classmethod
    def from_file_tensors(cls, tensors: dict[str, torch.Tensor]) -> GaussianStats:
        """Inverse of `file_tensors` (shapes checked)."""
        shift, total, tril = tensors["shift"], tensors["sum"], tensors["scatter_tril"]
        count = tensors["count"]
        p, d = shift.shape
        if (
            total.shape != (p, d)
            or tril.shape != (p, tril_size(d))
            or count.numel() != 1
            or int(count.reshape(-1)[0]) < 1
        ):
            raise PadimError("the training statistics do not match each other")
        layout = BlockLayout.for_dim(d)
        chunks = [  # symmetric: the sums' diagonal blocks are whole
            layout.symmetric_from_tril(tril[part], torch.float64) for part in position_chunks(p)
        ]
        return cls(
            int(count.reshape(-1)[0]),
            shift.to(torch.float64),
            total.to(torch.float64),
            chunks,
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "count": torch.tensor(self.count, dtype=torch.int64),
            "shift": self.shift,
            "sum": self.sum,
            "scatter_blocks": torch.cat(self.scatter),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> GaussianStats:
        packed = state["scatter_blocks"]
        chunks = [packed[part].clone() for part in position_chunks(packed.shape[0])]
        return cls(int(state["count"]), state["shift"], state["sum"], chunks)


# ----------------------------------------------------------------------------- whitening


@dataclass(frozen=True)
class BlockLayout:
    """Where the block rows of a lower-triangular d x d matrix live in a flat (P, S) buffer.

    Block i holds W[r_i:r_i+1, 0:r_i+1] row by row, (m_i, r_i+1): scoring multiplies it by the
    embeddings' columns (a matrix-vector product per position at batch 1, whose matrix rows
    are contiguous: about 1.5x faster than the transposed blocks on a CPU)."""

    dim: int
    bounds: tuple[int, ...]  # r_0 = 0 < r_1 < ... < r_k = dim

    @classmethod
    @lru_cache(maxsize=16)  # asked for on every batch and every scoring call
    def for_dim(cls, d: int) -> BlockLayout:
        k = max(1, min(8, math.ceil(d / 24)))
        return cls(d, tuple(round(i * d / k) for i in range(k + 1)))

    @property
    def blocks(self) -> list[tuple[int, int, int]]:
        """(first row, end row, offset) per block row."""
        out, offset = [], 0
        for lo, hi in zip(self.bounds[:-1], self.bounds[1:], strict=True):
            out.append((lo, hi, offset))
            offset += hi * (hi - lo)
        return out

    @property
    def size(self) -> int:
        return sum(hi * (hi - lo) for lo, hi in zip(self.bounds[:-1], self.bounds[1:], strict=True))

    def pack(self, w: torch.Tensor) -> torch.Tensor:
        """(c, d, d) -> (c, S): the block rows (entries above the diagonal blocks dropped)."""
        c = w.shape[0]
        return torch.cat([w[:, lo:hi, :hi].reshape(c, -1) for lo, hi, _ in self.blocks], dim=1)

    def _cells(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column in the d x d matrix of every entry of the block rows, (S,) each."""
        rows, cols = [], []
        for lo, hi, _ in self.blocks:
            r, c = torch.meshgrid(torch.arange(lo, hi), torch.arange(hi), indexing="ij")
            rows.append(r.reshape(-1))
            cols.append(c.reshape(-1))
        return torch.cat(rows), torch.cat(cols)

    @property
    @lru_cache(maxsize=16)  # noqa: B019
    def mirrored_tril_sources(self) -> torch.Tensor:
        """For each block-row entry of a symmetric matrix, its index in the packed lower
        triangle (entries above the diagonal read the mirrored entry)."""
        rows, cols = self._cells()
        hi, lo = torch.maximum(rows, cols), torch.minimum(rows, cols)
        return hi * (hi + 1) // 2 + lo

    def symmetric_from_tril(self, tril: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(c, d(d+1)/2) packed lower triangles of symmetric matrices -> their (c, S) block
        rows in `dtype` (the diagonal blocks whole, as the training sums keep them)."""
        return tril.to(dtype)[:, self.mirrored_tril_sources]

    def views(self, buf: torch.Tensor) -> list[torch.Tensor]:
        """(P, S) -> [(P, m_i, r_i+1)] views, no copies."""
        p = buf.shape[0]
        return [
            buf[:, off : off + hi * (hi - lo)].view(p, hi - lo, hi) for lo, hi, off in self.blocks
        ]

    def block_views(self, flat: torch.Tensor, p: int) -> list[torch.Tensor]:
        """A block-major buffer (P*S,) (block 0 of every position, then block 1, ...) ->
        [(P, m_i, r_i+1)] contiguous views. Scoring reads each block of every position in one
        sequential sweep: about 1.5x faster than blocks strided through a (P, S) buffer."""
        return [
            flat[p * off : p * (off + hi * (hi - lo))].view(p, hi - lo, hi)
            for lo, hi, off in self.blocks
        ]

    def tril_into(self, tril: torch.Tensor, views: list[torch.Tensor]) -> None:
        """Packed lower triangles (c, d(d+1)/2) -> block views [(c, m_i, r_i+1)], one row copy
        (and dtype conversion) at a time; the entries above the diagonal are left as they are
        (zeros in a buffer made by `torch.zeros`)."""
        for (lo, hi, _), view in zip(self.blocks, views, strict=True):
            for r in range(lo, hi):
                start = r * (r + 1) // 2
                view[:, r - lo, : r + 1].copy_(tril[:, start : start + r + 1])

    def tril_from(self, views: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """Block views [(c, m_i, r_i+1)] -> their packed lower triangles, written into `out`
        (c, d(d+1)/2) of any dtype; returns `out`."""
        for (lo, hi, _), view in zip(self.blocks, views, strict=True):
            for r in range(lo, hi):
                start = r * (r + 1) // 2
                out[:, start : start + r + 1].copy_(view[:, r - lo, : r + 1])
        return out

    def write_matrices(self, flat: torch.Tensor, p: int, part: slice, w: torch.Tensor) -> None:
        """Store the block rows of lower-triangular matrices w (c, d, d), positions `part`, in a
        block-major buffer."""
        for (lo, hi, _), view in zip(self.blocks, self.block_views(flat, p), strict=True):
            view[part] = w[:, lo:hi, :hi]

    def read_rows(self, flat: torch.Tensor, p: int, part: slice) -> torch.Tensor:
        """Position-major block rows (c, S) of positions `part` of a block-major buffer."""
        c = part.stop - part.start
        return torch.cat([v[part].reshape(c, -1) for v in self.block_views(flat, p)], dim=1)

    def unpack_blocks(self, buf: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(P, S) -> (P, d, d) with the block rows filled (the lower triangle plus the upper
        half of each diagonal block: all a Cholesky factorisation reads) and zeros above them,
        or whatever `out` held there when it is given."""
        if out is None:
            out = buf.new_zeros(buf.shape[0], self.dim, self.dim)
        for (lo, hi, _), view in zip(self.blocks, self.views(buf), strict=True):
            out[:, lo:hi, :hi] = view
        return out

    def unpack(self, buf: torch.Tensor) -> torch.Tensor:
        """(P, S) -> (P, d, d) lower-triangular."""
        return torch.tril(self.unpack_blocks(buf))

    def unpack_symmetric(self, buf: torch.Tensor) -> torch.Tensor:
        """(P, S) block rows of a symmetric matrix's lower part -> the full (P, d, d) matrix."""
        lower = self.unpack(buf)
        return lower + torch.tril(lower, -1).transpose(1, 2)


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


SHRINKAGE = options.SHRINKAGES


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


def _squared_distances(x: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """x (c, n, d), mean (c, d), L (c, d, d) -> |L^-1 (x - mean)|^2 (c, n), by a triangular
    solve (cheaper than inverting L when n < d)."""
    z = torch.linalg.solve_triangular(chol, (x - mean[:, None, :]).transpose(1, 2), upper=False)
    return z.square().sum(dim=1)


def _std(cov: torch.Tensor) -> torch.Tensor:
    """Per-channel standard deviations from covariances (c, d, d) -> (c, d), a copy."""
    return cov.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt().clone()


def _joined(pieces: list[torch.Tensor]) -> torch.Tensor:
    """Per-chunk results (c, ...) as one (P, ...) tensor (no copy when there is one chunk)."""
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


@dataclass
class HeldOut:
    """Patch terms (n, h, w) of held-out good images, scored by Gaussians fitted without them."""

    mahalanobis: torch.Tensor
    chebyshev: torch.Tensor


@dataclass
class GaussianModel:
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

    @property
    def positions(self) -> int:
        return int(self.mean.shape[0])

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

    @classmethod
    def fit(
        cls,
        stats: GaussianStats,
        regularisation: float = DEFAULT_REGULARISATION,
        holdout: HoldoutStore | torch.Tensor | None = None,
        consume: bool = False,
        on_chunk: Callable[[int], None] | None = None,
        shrinkage: str = "none",
    ) -> tuple[GaussianModel, HeldOut | None]:
        """Factorise covariance + reg*I chunk by chunk of positions.

        `holdout` (a `HoldoutStore`, or one (n, d, h, w) tensor): embeddings of good images
        not in `stats`. They are scored by
        the Gaussians fitted without them (their distances (n, h, w) are returned, for an
        honest threshold), then added to the statistics before the final factorisation, all in
        one pass. `consume` frees each chunk of sums once used (the stats are spent after), so
        the whitening matrices grow into the memory the sums give back. `on_chunk(positions)`
        reports progress. `shrinkage` "ledoit-wolf" shrinks each covariance towards mu*I
        (`shrinkage_intensity`) before the regularisation is added."""
        if shrinkage not in SHRINKAGE:
            raise PadimError(f"unknown shrinkage {shrinkage!r}: use {', '.join(SHRINKAGE)}")
        p, d = stats.positions, stats.dim
        layout = BlockLayout.for_dim(d)
        device = stats.shift.device
        whitening = torch.empty(p * layout.size, dtype=torch.float32, device=device)
        mean = torch.empty(p, d, dtype=torch.float64, device=device)
        if isinstance(holdout, torch.Tensor):
            holdout = HoldoutStore.from_tensor(holdout)
        if holdout is not None and holdout.n == 0:
            holdout = None
        n_hold = 0 if holdout is None else holdout.n
        held_sq = torch.empty(p, n_hold, dtype=torch.float64, device=device)
        held_cheb = torch.empty_like(held_sq)
        std = torch.empty(p, d, dtype=torch.float32, device=device)
        shrinking = shrinkage == "ledoit-wolf"
        rhos = torch.zeros(p, dtype=torch.float64, device=device) if shrinking else None
        count = stats.count
        scratch = torch.zeros(POSITION_CHUNK, d, d, dtype=torch.float64, device=device)
        trim_every = max(1, TRIM_BYTES // (POSITION_CHUNK * layout.size * 8))
        for i, part in enumerate(position_chunks(p)):
            if holdout is not None:
                held_part = holdout.chunk(part).to(device)  # (c, n, d)
                cov = stats._chunk_covariance(i, part, count, scratch)
                chunk_std = _std(cov)
                if shrinking:
                    shrink_(cov, count)
                chol = cholesky(cov, regularisation)
                chunk_mean = stats.shift[part] + stats.sum[part] / count
                x64 = held_part.to(torch.float64)
                held_sq[part] = _squared_distances(x64, chunk_mean, chol)
                held_cheb[part] = chebyshev_by_position(
                    held_part, chunk_mean.float(), chunk_std.float()
                )
                stats._add_chunk(i, part, held_part)
            total = count + n_hold
            cov = stats._chunk_covariance(i, part, total, scratch, spend=consume)
            std[part] = _std(cov).to(torch.float32)
            if rhos is not None:
                rhos[part] = shrink_(cov, total)
            w = whitening_factor(cov, regularisation)
            layout.write_matrices(whitening, p, part, w)
            mean[part] = stats.shift[part] + stats.sum[part] / total
            if consume:
                stats.scatter[i] = stats.scatter[i].new_empty(0)
                if i % trim_every == trim_every - 1:
                    release_free_memory()
            if on_chunk is not None:
                on_chunk(part.stop - part.start)
        stats.count = count + n_hold
        held_out = None
        if holdout is not None:
            h, w_ = holdout.grid
            held_out = HeldOut(
                held_sq.clamp_min(0).sqrt().T.reshape(n_hold, h, w_).to(torch.float32),
                held_cheb.T.reshape(n_hold, h, w_).to(torch.float32),
            )
        return cls(mean.to(torch.float32), whitening, std, rhos), held_out

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
        return _joined(terms).T.reshape(b, h, w)

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
        total = _joined(pieces)
        return total.clamp_min(0).sqrt().T.reshape(b, h, w)
