"""Shift-tolerant scoring: K = 0 is the paper; K > 0 equals the cell-by-cell definition
(`padim.core.reference.neighbourhood_distances`), at inference and for the held-out images the
threshold is calibrated on; a patch moved by a cell scores as if it had not moved."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from padim.core import reference
from padim.core.factorise import fit_gaussians
from padim.core.gaussian import GaussianStats
from padim.core.neighbourhood import offsets, shift_back, shift_embeddings
from padim.core.net import PadimNet


def embeddings(
    rng: np.random.Generator, n: int, d: int = 6, h: int = 5, w: int = 7
) -> torch.Tensor:
    """Good embeddings whose mean varies from cell to cell (so cells are told apart)."""
    field = rng.normal(size=(1, d, h, w)) * 3.0
    return torch.from_numpy(field + rng.normal(size=(n, d, h, w))).float()


def net_for(train: torch.Tensor, k: int) -> PadimNet:
    gaussian, _ = fit_gaussians(GaussianStats.from_batch(train), 0.01)
    return PadimNet(nn.Identity(), gaussian, sigma=0.0, neighbourhood=k).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [0, 1, 2])
def test_patch_scores_equal_the_definition(k):
    rng = np.random.default_rng(0)
    train, test = embeddings(rng, 40), embeddings(rng, 3)
    mean, inv_cov = reference.fit(train.double())
    want = reference.neighbourhood_distances(test, mean, inv_cov, k)
    got = net_for(train, k).patch_scores(test)
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=2e-4, atol=2e-4)


def test_k0_is_the_paper():
    rng = np.random.default_rng(1)
    train, test = embeddings(rng, 30), embeddings(rng, 2)
    mean, inv_cov = reference.fit(train.double())
    want = reference.distances(test, mean, inv_cov)
    scores, maps = net_for(train, 0)(test)
    np.testing.assert_allclose(maps[:, 0].double().numpy(), want.numpy(), rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(scores.double().numpy(), want.flatten(1).amax(1).numpy(), rtol=2e-4)


def test_a_patch_moved_by_a_cell_is_scored_as_if_it_had_not():
    rng = np.random.default_rng(2)
    train = embeddings(rng, 60)
    good = train[:1].clone()
    moved = good.roll(shifts=1, dims=3)  # every patch one cell to the right
    strict, tolerant = net_for(train, 0), net_for(train, 1)
    inner = (slice(None), slice(None), slice(1, None))  # the wrapped-around column aside
    assert strict.patch_scores(moved)[inner].mean() > 3 * strict.patch_scores(good)[inner].mean()
    assert tolerant.patch_scores(moved)[inner].max() <= strict.patch_scores(good)[inner].max()


def test_held_out_terms_are_scored_by_gaussians_that_never_saw_them():
    rng = np.random.default_rng(3)
    train, held = embeddings(rng, 50), embeddings(rng, 4)
    k = 1
    _, terms = fit_gaussians(GaussianStats.from_batch(train), 0.01, held, neighbourhood=k)
    assert terms is not None and terms.neighbours is not None
    assert set(terms.neighbours) == set(offsets(k)) - {(0, 0)}
    net = net_for(torch.cat([train, held]), k)  # the final model (held-out images added)
    got = net.held_out_patches(terms, slice(0, 4), "mahalanobis")
    mean, inv_cov = reference.fit(train.double())  # without the held-out images
    want = reference.neighbourhood_distances(held, mean, inv_cov, k)
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=2e-4, atol=2e-4)


def test_shifts_round_trip():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    for dy, dx in offsets(2):
        moved = shift_embeddings(x, dy, dx, 2)
        back = shift_back(moved[:, 0], dy, dx, 2)  # in the grid, each cell returns home
        inside = back < 1e30
        assert torch.equal(back[inside], x[:, 0][inside])
