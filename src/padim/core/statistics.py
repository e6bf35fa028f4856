"""`GaussianStats`: streamed sufficient statistics of the embeddings, per patch position.

Training never holds more than one batch of embeddings: per position, the count and the float64
sums of (x - shift) and of the lower block rows of (x - shift)(x - shift)^T (see
`padim.core.layout.BlockLayout`: 56 % of the memory and the arithmetic of full matrices, no
gathers), where the shift is the first batch's mean (so the sums stay small and the covariance
does not suffer from cancellation). The sums live in chunks of positions, so fitting can free
each chunk as soon as its Gaussians are factorised. Statistics from separate runs merge exactly
(`merge`), which is what a distributed fit or `padim update` needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from padim.core.holdout import HoldoutStore, embeddings_by_position
from padim.core.layout import BlockLayout, position_chunks, tril_size
from padim.errors import PadimError
from padim.memory import release_free_memory

STORE_READ_BYTES = 32 << 20  # embeddings read from a store at once (float64)


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
