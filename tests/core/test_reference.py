"""The engineered Gaussians (streamed float64 sums, block rows, float32 whitening, chunked
scoring) compute the paper's formulae as `padim.core.reference` writes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from padim.core import reference
from padim.core.factorise import fit_gaussians
from padim.core.gaussian import GaussianStats


def _embeddings(seed: int, n: int, d: int = 12, h: int = 5, w: int = 4, offset: float = 0.0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen, dtype=torch.float64)
    x = torch.randn(n, h, w, d, generator=gen, dtype=torch.float64) @ mix + offset
    return x.permute(0, 3, 1, 2).contiguous()


def test_the_reference_is_the_textbook_formula_at_one_position():
    train, query = _embeddings(0, 30), _embeddings(1, 2)
    mean, inv_cov = reference.fit(train)
    x = train[:, :, 2, 3].numpy()  # position (2, 3) is row 2 * 4 + 3 of the flattened grid
    cov = np.cov(x, rowvar=False) + 0.01 * np.eye(x.shape[1])
    delta = query[1, :, 2, 3].numpy() - x.mean(axis=0)
    want = np.sqrt(delta @ np.linalg.inv(cov) @ delta)
    assert reference.distances(query, mean, inv_cov)[1, 2, 3].item() == pytest.approx(want)


@pytest.mark.parametrize(("batches", "offset"), [(1, 0.0), (3, 0.0), (4, 250.0)])
def test_the_engineered_gaussians_equal_the_reference(batches, offset):
    """Sums streamed over batches (shifted, float64), factorised and stored as float32 block
    rows: the same Mahalanobis distances as the reference's explicit inverse."""
    train = _embeddings(2, 40, offset=offset)
    query = _embeddings(3, 3, offset=offset)
    mean, inv_cov = reference.fit(train)
    want = reference.distances(query, mean, inv_cov)
    stats = GaussianStats.from_batches(train.float().chunk(batches))
    model, _ = fit_gaussians(stats, regularisation=0.01)
    got = model.distances(query.float()).double()
    torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4)


def test_held_out_scores_equal_the_reference_without_those_images():
    """Held-out images are scored by Gaussians fitted without them, then added: the held-out
    distances are the reference's on the other images, the final Gaussians the reference's on
    all of them."""
    train, held = _embeddings(4, 25), _embeddings(5, 4)
    model, scored = fit_gaussians(GaussianStats.from_batch(train.float()), holdout=held.float())
    assert scored is not None
    mean, inv_cov = reference.fit(train)
    want = reference.distances(held, mean, inv_cov)
    torch.testing.assert_close(scored.mahalanobis.double(), want, rtol=2e-4, atol=2e-4)
    mean_all, inv_all = reference.fit(torch.cat([train, held]))
    got = model.distances(train[:2].float()).double()
    torch.testing.assert_close(
        got, reference.distances(train[:2], mean_all, inv_all), rtol=2e-4, atol=2e-4
    )
