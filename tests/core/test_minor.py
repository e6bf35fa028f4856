"""Minor-component Gaussians (`--covariance minor`) compute `reference.minor_precision`'s
distances; with every component kept they are the full model; rounding to the file's precision
is exact on reload; merged statistics give the Gaussians of one fit."""

from __future__ import annotations

import pytest
import torch

from padim.core import reference
from padim.core.factorise import Representation, fit_gaussians
from padim.core.gaussian import GaussianModel, GaussianStats
from padim.core.minor import (
    MinorGaussianModel,
    dequantise_rows,
    minor_factor,
    minor_squared,
    quantise_rows,
    stored_rows,
)
from padim.errors import PadimError

D = 12


def _embeddings(seed: int, n: int, h: int = 5, w: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-1.5, 1, D, dtype=torch.float64)  # a wide spread of variances
    mix = torch.linalg.qr(torch.randn(D, D, generator=gen, dtype=torch.float64))[0]
    x = torch.randn(n, h, w, D, generator=gen, dtype=torch.float64) * scales @ mix
    return x.permute(0, 3, 1, 2).contiguous()


def _minor(r: int, storage: str = "float32") -> Representation:
    return Representation("minor", r, storage)


def _reference(train: torch.Tensor, query: torch.Tensor, r: int) -> torch.Tensor:
    mean, _ = reference.fit(train)
    n, _, h, w = train.shape
    x = train.reshape(n, D, h * w).permute(2, 0, 1)
    centred = x - mean[:, None, :]
    cov = centred.transpose(1, 2) @ centred / (n - 1) + 0.01 * torch.eye(D, dtype=torch.float64)
    return reference.distances(query, mean, reference.minor_precision(cov, r))


@pytest.mark.parametrize("r", [1, 4, 11])
def test_minor_distances_equal_the_reference_formula(r):
    train, query = _embeddings(0, 40), _embeddings(1, 3)
    model, _ = fit_gaussians(
        GaussianStats.from_batch(train.float()), 0.01, representation=_minor(r)
    )
    assert isinstance(model, MinorGaussianModel) and model.components == r
    got = model.distances(query.float()).double()
    torch.testing.assert_close(got, _reference(train, query, r), rtol=1e-5, atol=1e-5)


def test_every_component_kept_is_the_full_model():
    train, query = _embeddings(2, 40), _embeddings(3, 3)
    stats = GaussianStats.from_batch(train.float())
    full, _ = fit_gaussians(stats.copy(), 0.01)
    minor, _ = fit_gaussians(stats, 0.01, representation=_minor(D))
    assert isinstance(full, GaussianModel) and float(minor.iso.abs().max()) == 0.0
    want = full.distances(query.float())
    torch.testing.assert_close(minor.distances(query.float()), want, rtol=1e-5, atol=0)
    mean, inv_cov = reference.fit(train)
    torch.testing.assert_close(
        minor.distances(query.float()).double(),
        reference.distances(query, mean, inv_cov),
        rtol=1e-5,
        atol=0,
    )


def test_fewer_components_move_scores_less_than_isotropic_ones():
    """The kept least-variance directions carry the distance: more of them, closer to full."""
    train, query = _embeddings(4, 60), _embeddings(5, 4)
    stats = GaussianStats.from_batch(train.float())
    want = fit_gaussians(stats.copy(), 0.01)[0].distances(query.float())
    errors = []
    for r in (1, 4, 8, D):
        got = fit_gaussians(stats.copy(), 0.01, representation=_minor(r))[0]
        errors.append(float(((got.distances(query.float()) - want).abs() / want).mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5 < errors[0]


def test_held_out_images_are_scored_by_minor_gaussians_without_them():
    train, held = _embeddings(6, 30), _embeddings(7, 4)
    model, scored = fit_gaussians(
        GaussianStats.from_batch(train.float()), 0.01, held.float(), representation=_minor(3)
    )
    assert scored is not None
    torch.testing.assert_close(
        scored.mahalanobis.double(), _reference(train, held, 3), rtol=1e-5, atol=1e-5
    )
    got = model.distances(held.float()).double()
    torch.testing.assert_close(
        got, _reference(torch.cat([train, held]), held, 3), rtol=1e-5, atol=1e-5
    )


def test_merged_statistics_give_the_gaussians_of_one_fit():
    """Sums merged across batches (as Ray shards and `update` merge them) factorise into the
    same minor components as one pass over every image: scores agree to float rounding."""
    train, query = _embeddings(8, 48), _embeddings(9, 3)
    parts = [GaussianStats.from_batch(c.float()) for c in train.chunk(3)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    one = GaussianStats.from_batch(train.float())
    a = fit_gaussians(merged, 0.01, representation=_minor(4))[0].distances(query.float())
    b = fit_gaussians(one, 0.01, representation=_minor(4))[0].distances(query.float())
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_int8_rows_round_to_half_a_step_and_reload_exactly():
    gen = torch.Generator().manual_seed(12)
    rows = torch.randn(7, 4, D, generator=gen, dtype=torch.float64)
    rows *= torch.logspace(-3, 2, 4, dtype=torch.float64)[None, :, None]
    codes, scales = quantise_rows(rows)
    assert codes.dtype == torch.int8 and int(codes.abs().max()) == 127
    back = dequantise_rows(codes, scales)
    step = scales[..., None].double()
    float32_rounding = rows.abs() * 2**-23
    assert bool(((back.double() - rows).abs() <= step / 2 + float32_rounding).all())
    for storage in ("int8", "float16", "float32"):
        once, scales = stored_rows(rows, storage)
        if scales is None:
            assert torch.equal(stored_rows(once, storage)[0], once)  # reloads exactly
        else:
            assert torch.equal(dequantise_rows(*quantise_rows(once, scales)), once)
    zero = torch.zeros(2, 1, D)
    assert torch.equal(dequantise_rows(*quantise_rows(zero)), zero)


def test_int8_storage_keeps_scores_within_a_percent():
    train, query = _embeddings(10, 40), _embeddings(11, 3)
    stats = GaussianStats.from_batch(train.float())
    exact = fit_gaussians(stats.copy(), 0.01, representation=_minor(4))[0]
    small = fit_gaussians(stats, 0.01, representation=_minor(4, "int8"))[0]
    a, b = exact.distances(query.float()), small.distances(query.float())
    assert not torch.equal(a, b)
    torch.testing.assert_close(b, a, rtol=1e-2, atol=0)


def test_a_covariance_that_is_not_positive_definite_is_refused():
    cov = torch.eye(D, dtype=torch.float64).repeat(2, 1, 1)
    cov[1, 0, 0] = float("nan")
    with pytest.raises(PadimError, match="positive definite"):
        minor_factor(cov, 0.01, 4)
    with pytest.raises(PadimError, match="covariance"):
        Representation("diagonal")


def test_fewer_images_than_channels_give_the_reference_formula():
    """n images span n - 1 directions; the other eigenvalues all sit at the regularisation, and
    the kept directions are the reference's fixed choice among them."""
    train, query = _embeddings(13, 5), _embeddings(14, 3)
    minor = fit_gaussians(GaussianStats.from_batch(train.float()), 0.01, representation=_minor(3))
    got = minor[0].distances(query.float()).double()
    torch.testing.assert_close(got, _reference(train, query, 3), rtol=1e-5, atol=1e-5)


def test_summed_and_stored_statistics_give_the_same_minor_gaussians():
    """Embeddings summed in memory or kept on disk by position (two statistics paths) give
    the same scores, also with fewer images than channels (a degenerate floor of
    eigenvalues, where an arbitrary choice of directions would not)."""
    from padim.core.holdout import HoldoutStore

    for n in (6, 40):
        train, query = _embeddings(15 + n, n), _embeddings(16, 3)
        a = fit_gaussians(GaussianStats.from_batch(train.float()), 0.01, representation=_minor(3))
        with HoldoutStore() as store:
            store.add(train.float())
            b = fit_gaussians(
                GaussianStats.from_store(store), 0.01, representation=_minor(3), consume=True
            )
        want = a[0].distances(query.float())
        torch.testing.assert_close(b[0].distances(query.float()), want, rtol=1e-4, atol=0)


@pytest.mark.parametrize("n", [6, 40])
def test_the_float32_eigensolver_gives_float64s_distances(n):
    """int8/float16 models factorise in float32 and recompute the kept variances in float64:
    distances within 1e-3 of the float64 factorisation's (int8's rounding moves them by up to
    1e-2), with and without a floor of tied eigenvalues, variances spread over 1e4."""
    x = _embeddings(30 + n, n).permute(0, 2, 3, 1).reshape(n, -1, D).transpose(0, 1)  # (P, n, D)
    centred = x - x.mean(dim=1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred / (n - 1)
    query = _embeddings(31, 3).permute(0, 2, 3, 1).reshape(3, -1, D).transpose(0, 1)
    mean = x.mean(dim=1)
    sq = {
        precise: minor_squared(
            query - mean[:, None, :], *minor_factor(cov.clone(), 0.01, 3, precise)
        )
        for precise in (True, False)
    }
    torch.testing.assert_close(sq[False], sq[True], rtol=1e-3, atol=0)
