"""Held-out embeddings kept on disk, by patch position, so fit memory does not grow with them.

The threshold is calibrated on good images the Gaussians were fitted without; their embeddings
must wait until the statistics of the other images are complete. Held in memory they grow with
the number of held-out images and with the geometry (about 9 MB per image for efficientnet_lite0
at 256x256, 23 MB at 1136x464). Here each batch is written once to a temporary file as
(positions, images, channels) float32, and the factorisation reads one chunk of positions at a
time: a contiguous run of each batch file.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from padim.errors import PadimError


def positions_view(emb: torch.Tensor) -> torch.Tensor:
    """(B, d, h, w) -> (h*w, B, d) without copying (a view whatever the memory format)."""
    b, d, h, w = emb.shape
    return emb.permute(2, 3, 0, 1).reshape(h * w, b, d)


def embeddings_by_position(emb: torch.Tensor) -> torch.Tensor:
    """(B, d, h, w) -> (h*w, B, d), contiguous: one row block per patch position. A copy of
    rows of d values for channels-last embeddings (as `Embedder` makes them), a transposition
    otherwise."""
    return positions_view(emb).contiguous()


class HoldoutStore:
    """Append embedding batches (B, d, h, w); read (c, n, d) position chunks back.

    With `directory=None` a private temporary folder is made (removed by `close`, or on leaving
    a `with` block); `in_memory=True` keeps the batches in RAM (small tests, tiny models)."""

    def __init__(self, directory: str | Path | None = None, in_memory: bool = False) -> None:
        self.in_memory = in_memory
        self._owned = directory is None and not in_memory
        self.directory = (
            Path(tempfile.mkdtemp(prefix="padim-holdout-")) if self._owned else directory
        )
        self._batches: list[tuple[int, Path | torch.Tensor]] = []  # (images, file or tensor)
        self.n = 0
        self.dim = 0
        self.grid: tuple[int, int] = (0, 0)

    @classmethod
    def from_tensor(cls, emb: torch.Tensor) -> HoldoutStore:
        """An in-memory store of one (n, d, h, w) tensor."""
        store = cls(in_memory=True)
        store.add(emb)
        return store

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]

    def add(self, emb: torch.Tensor) -> None:
        """Keep a batch of embeddings (B, d, h, w)."""
        b, d, h, w = emb.shape
        if self.n and (d, (h, w)) != (self.dim, self.grid):
            raise PadimError(
                f"held-out embedding shape {tuple(emb.shape)} differs from the earlier batches"
            )
        self.dim, self.grid = d, (h, w)
        by_pos = embeddings_by_position(emb.detach().to("cpu", torch.float32))
        if self.in_memory:
            self._batches.append((b, by_pos))
        else:
            assert self.directory is not None
            path = Path(self.directory) / f"batch{len(self._batches):05d}.f32"
            by_pos.numpy().tofile(path)
            self._batches.append((b, path))
        self.n += b

    def chunk(self, part: slice) -> torch.Tensor:
        """Embeddings of positions `part` of every held-out image: (c, n, d) float32."""
        c, d = part.stop - part.start, self.dim
        pieces = []
        for b, where in self._batches:
            if isinstance(where, torch.Tensor):
                pieces.append(where[part])
                continue
            offset = part.start * b * d * 4
            data = np.fromfile(where, dtype=np.float32, count=c * b * d, offset=offset)
            pieces.append(torch.from_numpy(data).view(c, b, d))
        return torch.cat(pieces, dim=1)

    def close(self) -> None:
        """Forget the batches and remove the temporary folder (if this store made it)."""
        self._batches.clear()
        if self._owned and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> HoldoutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
