"""Held-out embeddings on disk: read back exactly, by position chunk; the folder goes away."""

from __future__ import annotations

import numpy as np
import torch

from padim.core.factorise import fit_gaussians
from padim.core.gaussian import GaussianStats
from padim.core.holdout import HoldoutStore
from padim.core.layout import position_chunks


def test_chunks_read_back_what_was_added(tmp_path):
    emb = torch.randn(7, 5, 6, 9)
    with HoldoutStore() as store:
        for part in (emb[:3], emb[3:4], emb[4:]):  # batches of different sizes
            store.add(part)
        folder = store.directory
        assert store.n == 7 and store.grid == (6, 9) and len(list(folder.iterdir())) == 3
        by_pos = emb.reshape(7, 5, 54).permute(2, 0, 1)
        for part in position_chunks(54, 10):
            assert torch.equal(store.chunk(part), by_pos[part])
    assert not folder.exists()


def test_the_fit_is_the_same_from_disk_or_memory():
    rng = np.random.default_rng(3)
    emb = torch.from_numpy(rng.normal(size=(20, 4, 5, 7))).float()
    fit_part, held = emb[:14], emb[14:]
    a, held_a = fit_gaussians(GaussianStats.from_batch(fit_part), 0.01, holdout=held)
    with HoldoutStore() as store:
        store.add(held[:2])
        store.add(held[2:])
        b, held_b = fit_gaussians(GaussianStats.from_batch(fit_part), 0.01, holdout=store)
    assert torch.equal(a.whitening, b.whitening) and torch.equal(a.mean, b.mean)
    assert torch.equal(held_a.mahalanobis, held_b.mahalanobis)
