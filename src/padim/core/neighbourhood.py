"""Shift-tolerant scoring: each patch scored by the nearest of the Gaussians within K cells.

PaDiM scores the patch at grid cell q against the Gaussian fitted at q only, so a part that sits
a few pixels away from where the training parts sat is scored against the wrong Gaussians. With
a neighbourhood of K cells the patch score is

    s(q) = min over offsets o with |o_y|, |o_x| <= K of  score(x_q ; Gaussian at q + o)

(K = 0 is the paper). It is computed one offset at a time: the embeddings are shifted by o
(`shift_embeddings`, replicated borders), scored against every Gaussian in place, and the
scores shifted back (`shift_back`, cells with no Gaussian at q + o get a huge value), keeping the
running minimum. Pads and slices only, so exported graphs hold it too. The cost is (2K + 1)^2
times the Gaussian scoring (the backbone is run once).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

OUTSIDE = 3.0e38  # the score of a cell whose neighbour Gaussian lies outside the grid


def offsets(k: int) -> Iterator[tuple[int, int]]:
    """The (dy, dx) offsets of a K-cell neighbourhood, (0, 0) first."""
    yield 0, 0
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            if (dy, dx) != (0, 0):
                yield dy, dx


def shift_embeddings(emb: torch.Tensor, dy: int, dx: int, k: int) -> torch.Tensor:
    """(B, d, h, w) -> the same shape with out[..., p] = emb[..., p - o] (borders replicated;
    those cells are never read back by `shift_back`)."""
    if k == 0 or (dy, dx) == (0, 0):
        return emb
    h, w = emb.shape[-2:]
    padded = F.pad(emb, (k, k, k, k), mode="replicate")
    return padded[:, :, k - dy : k - dy + h, k - dx : k - dx + w]


def shift_back(scores: torch.Tensor, dy: int, dx: int, k: int) -> torch.Tensor:
    """(B, h, w) scores of shifted embeddings, indexed by Gaussian cell p -> indexed by patch
    cell q = p - o: out[..., q] = scores[..., q + o], OUTSIDE where q + o is off the grid."""
    if k == 0 or (dy, dx) == (0, 0):
        return scores
    h, w = scores.shape[-2:]
    padded = F.pad(scores, (k, k, k, k), mode="constant", value=OUTSIDE)
    return padded[:, k + dy : k + dy + h, k + dx : k + dx + w]


def neighbourhood_min(
    per_offset: Iterator[tuple[tuple[int, int], torch.Tensor]], k: int
) -> torch.Tensor:
    """The running minimum over offsets of `shift_back`ed scores ((dy, dx), (B, h, w))."""
    best: torch.Tensor | None = None
    for (dy, dx), scores in per_offset:
        back = shift_back(scores, dy, dx, k)
        best = back if best is None else torch.minimum(best, back)
    assert best is not None
    return best
