import numpy as np
import pytest
import torch

from padim.core.factorise import fit_gaussians
from padim.core.gaussian import GaussianModel, GaussianStats
from padim.core.holdout import embeddings_by_position
from padim.core.layout import POSITION_CHUNK, BlockLayout
from padim.core.linalg import shrink_, shrinkage_intensity
from padim.errors import PadimError


def _emb(rng, n, d=5, h=3, w=2, offset=0.0):
    base = rng.normal(size=(d, d))
    x = rng.normal(size=(n, h, w, d)) @ base + offset
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _numpy_cov(emb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = embeddings_by_position(emb).numpy()  # (P, N, d)
    means = x.mean(axis=1)
    covs = np.stack([np.cov(x[p], rowvar=False) for p in range(x.shape[0])])
    return means, covs


def test_streamed_statistics_match_numpy():
    rng = np.random.default_rng(0)
    emb = _emb(rng, 23)
    stats = GaussianStats.from_batch(emb[:4])
    for start in range(4, 23, 6):
        stats.update(emb[start : start + 6])
    means, covs = _numpy_cov(emb)
    assert stats.count == 23
    np.testing.assert_allclose(stats.mean().numpy(), means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.covariance().numpy(), covs, rtol=1e-10, atol=1e-12)


def test_shifted_sums_survive_a_large_offset():
    # Naive sum-of-squares in float32 would lose the variance entirely at this offset.
    rng = np.random.default_rng(1)
    emb = _emb(rng, 30, offset=1e6).to(torch.float32)
    stats = GaussianStats.from_batch(emb[:10])
    stats.update(emb[10:])
    _, covs = _numpy_cov(emb.to(torch.float64))
    np.testing.assert_allclose(stats.covariance().numpy(), covs, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("cut", [1, 7, 19])
def test_merge_is_exact_for_uneven_shards(cut):
    rng = np.random.default_rng(2)
    emb = _emb(rng, 20, offset=50.0)
    whole = GaussianStats.from_batch(emb[:5])
    whole.update(emb[5:])
    a = GaussianStats.from_batch(emb[:cut])
    b = GaussianStats.from_batch(emb[cut:])
    merged = a.merge(b)
    assert merged.count == 20
    np.testing.assert_allclose(merged.mean().numpy(), whole.mean().numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        merged.covariance().numpy(), whole.covariance().numpy(), rtol=1e-10, atol=1e-10
    )


def test_state_dict_round_trip():
    rng = np.random.default_rng(3)
    stats = GaussianStats.from_batch(_emb(rng, 6))
    again = GaussianStats.from_state_dict(stats.state_dict())
    assert again.count == 6
    assert all(torch.equal(a, b) for a, b in zip(again.scatter, stats.scatter, strict=True))
    assert torch.equal(again.covariance(), stats.covariance())


def test_mahalanobis_matches_explicit_inverse():
    rng = np.random.default_rng(4)
    emb = _emb(rng, 40)
    stats = GaussianStats.from_batch(emb)
    model, _ = fit_gaussians(stats, regularisation=0.01)
    query = _emb(rng, 3)
    got = model.distances(query.to(torch.float32)).numpy()  # (3, h, w)
    means, covs = _numpy_cov(emb)
    x = embeddings_by_position(query).numpy()
    for p in range(x.shape[0]):
        prec = np.linalg.inv(covs[p] + 0.01 * np.eye(covs.shape[1]))
        for i in range(3):
            delta = x[p, i] - means[p]
            want = np.sqrt(delta @ prec @ delta)
            assert got[i].ravel()[p] == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_scoring_in_position_chunks_equals_one_piece(channels_last, monkeypatch):
    """Large batches are centred and scored a few positions at a time (memory flat in the
    batch): the same distances and Chebyshev terms as in one piece, in either memory format."""
    import padim.core.gaussian as gaussian

    rng = np.random.default_rng(7)
    emb = _emb(rng, 40, d=6, h=5, w=4)
    model, _ = fit_gaussians(GaussianStats.from_batch(emb), regularisation=0.01)
    query = _emb(rng, 7, d=6, h=5, w=4).float()
    if channels_last:
        query = query.contiguous(memory_format=torch.channels_last)
    whole = model.distances(query), model.chebyshev(query)
    monkeypatch.setattr(gaussian, "SCORE_CHUNK_BYTES", 7 * 6 * 4 * 3)  # 3 positions a chunk
    assert len(list(model._centred_parts(query))) == 7  # 20 positions
    chunked = model.distances(query), model.chebyshev(query)
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    single = torch.cat([model.distances(query[i : i + 1]) for i in range(7)])
    torch.testing.assert_close(single, whole[0], rtol=1e-5, atol=1e-5)


def test_whitening_is_lower_triangular_and_inverts_the_covariance():
    rng = np.random.default_rng(5)
    stats = GaussianStats.from_batch(_emb(rng, 12, d=4))
    model, _ = fit_gaussians(stats, regularisation=0.01)
    w = model.full().double()
    assert torch.allclose(w, torch.tril(w))
    cov = stats.covariance() + 0.01 * torch.eye(4, dtype=torch.float64)
    eye = w @ cov @ w.transpose(1, 2)
    assert torch.allclose(eye, torch.eye(4, dtype=torch.float64).expand_as(eye), atol=1e-5)


@pytest.mark.parametrize("d", [1, 7, 48, 49, 100, 203])
def test_triangular_inverse_by_halves_equals_a_solve(d):
    """The block inverse (direct below INVERSE_BLOCK rows, halves above, odd sizes) is the
    triangular solve's answer, lower-triangular with exact zeros above the diagonal."""
    from padim.core.linalg import triangular_inverse

    gen = torch.Generator().manual_seed(d)
    a = torch.randn(3, d, d + 5, generator=gen, dtype=torch.float64)
    lower = torch.linalg.cholesky(a @ a.transpose(1, 2) / d + 0.1 * torch.eye(d))
    inv = triangular_inverse(lower)
    eye = torch.eye(d, dtype=torch.float64).expand_as(lower)
    torch.testing.assert_close(inv, torch.linalg.solve_triangular(lower, eye, upper=False))
    torch.testing.assert_close(lower @ inv, eye)
    assert torch.equal(torch.triu(inv, 1), torch.zeros_like(inv))


def test_one_image_means_zero_covariance_plus_regularisation():
    rng = np.random.default_rng(6)
    one = _emb(rng, 1)
    model, _ = fit_gaussians(GaussianStats.from_batch(one), regularisation=0.04)
    other = _emb(rng, 1)
    expected = ((other - one).square().sum(dim=1).sqrt() / 0.2).float()  # |y-x|/sqrt(reg)
    torch.testing.assert_close(model.distances(other), expected, rtol=1e-4, atol=1e-4)
    assert torch.all(model.std == 0)


def test_non_finite_features_give_a_clear_error():
    emb = _emb(np.random.default_rng(7), 6)
    emb[0, 0, 0, 0] = float("nan")
    with pytest.raises(PadimError, match="positive definite"):
        fit_gaussians(GaussianStats.from_batch(emb))


def test_shape_mismatch_on_update():
    rng = np.random.default_rng(8)
    stats = GaussianStats.from_batch(_emb(rng, 3))
    with pytest.raises(PadimError, match="does not match"):
        stats.update(_emb(rng, 3, d=4))


def test_many_positions_span_several_chunks():
    """More positions than one chunk of sums: streamed and merged statistics stay exact."""
    rng = np.random.default_rng(9)
    emb = _emb(rng, 9, d=3, h=20, w=15)  # 300 positions: several chunks
    stats = GaussianStats.from_batch(emb[:4])
    stats.update(emb[4:])
    assert len(stats.scatter) == -(-300 // POSITION_CHUNK) > 1
    _, covs = _numpy_cov(emb)
    np.testing.assert_allclose(stats.covariance().numpy(), covs, rtol=1e-10, atol=1e-12)
    merged = GaussianStats.from_batch(emb[:2]).merge(GaussianStats.from_batch(emb[2:]))
    np.testing.assert_allclose(merged.covariance().numpy(), covs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d", [1, 6, 30, 176])
def test_packed_triangles_hold_the_lower_triangle_row_by_row(d):
    w = torch.tril(torch.randn(3, d, d))
    layout = BlockLayout.for_dim(d)
    packed = GaussianModel.from_full(torch.zeros(3, d), w).tril()
    rows, cols = torch.tril_indices(d, d)
    assert packed.shape == (3, d * (d + 1) // 2)
    assert torch.equal(packed, w[:, rows, cols])
    # a symmetric matrix's block rows (whole diagonal blocks, as the sums keep them)
    sym = w + torch.tril(w, -1).transpose(1, 2)
    assert torch.equal(layout.symmetric_from_tril(packed, torch.float32), layout.pack(sym))


@pytest.mark.parametrize("d", [1, 5, 24, 100, 176, 550])
def test_block_rows_hold_exactly_the_lower_triangle(d):
    layout = BlockLayout.for_dim(d)
    assert layout.bounds[0] == 0 and layout.bounds[-1] == d
    assert d * (d + 1) / 2 <= layout.size <= d * d
    if d >= 100:  # five to eight block rows: 56-60 % of a full matrix
        assert layout.size <= 0.6 * d * d
    w = torch.tril(torch.randn(2, d, d))
    buf = layout.pack(w)
    assert buf.shape == (2, layout.size)
    assert torch.equal(layout.unpack(buf), w)
    model = GaussianModel.from_full(torch.zeros(2, d), w)
    assert torch.equal(model.full(), w)
    assert torch.equal(model.rows(), buf) and torch.equal(model.rows(slice(1, 2)), buf[1:])
    assert torch.equal(GaussianModel.from_tril(model.mean, model.tril()).whitening, model.whitening)
    views = layout.block_views(model.whitening, 2)  # block-major: each block one sweep
    assert all(v.is_contiguous() for v in views)
    for (lo, hi, _), view in zip(layout.blocks, views, strict=True):
        assert torch.equal(view, w[:, lo:hi, :hi])


def test_holdout_scored_by_the_model_without_it_then_added():
    rng = np.random.default_rng(10)
    emb = _emb(rng, 30, d=4)
    fit_part, held = emb[:24], emb[24:]
    model, held_out = fit_gaussians(
        GaussianStats.from_batch(fit_part), 0.01, holdout=held.to(torch.float32)
    )
    without, _ = fit_gaussians(GaussianStats.from_batch(fit_part), 0.01)
    everything, none = fit_gaussians(GaussianStats.from_batch(emb), 0.01)
    assert none is None
    np.testing.assert_allclose(
        held_out.mahalanobis.numpy(), without.distances(held.float()).numpy(), rtol=1e-4
    )
    np.testing.assert_allclose(
        held_out.chebyshev.numpy(), without.chebyshev(held.float()).numpy(), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(model.std.numpy(), everything.std.numpy(), rtol=1e-5)
    np.testing.assert_allclose(model.mean.numpy(), everything.mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        model.whitening.numpy(), everything.whitening.numpy(), rtol=1e-4, atol=1e-6
    )


def test_consume_frees_the_sums():
    stats = GaussianStats.from_batch(_emb(np.random.default_rng(11), 8, d=3, h=20, w=15))
    fit_gaussians(stats, consume=True)
    assert all(chunk.numel() == 0 for chunk in stats.scatter)


def test_std_is_the_per_channel_sample_std():
    emb = _emb(np.random.default_rng(12), 7)
    model, _ = fit_gaussians(GaussianStats.from_batch(emb), 0.01)
    x = emb.numpy().transpose(2, 3, 0, 1).reshape(-1, 7, 5)  # (P, n, d)
    np.testing.assert_allclose(model.std.numpy(), x.std(axis=1, ddof=1), rtol=1e-5)


def test_ledoit_wolf_intensity_by_hand():
    """Rao-Blackwellised Ledoit-Wolf on S = diag(4, 1), n = 10:
    tr = 5, tr(S^2) = 17, rho = (8/10 * 17 + 25) / (12 * (17 - 25/2)) = 38.6 / 54."""
    cov = torch.tensor([[[4.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    rho, mu = shrinkage_intensity(cov, 10)
    assert float(rho) == pytest.approx(38.6 / 54)
    assert float(mu) == pytest.approx(2.5)
    shrunk = cov.clone()
    shrink_(shrunk, 10)
    r = 38.6 / 54
    expected = torch.tensor([[4 * (1 - r) + 2.5 * r, 0.0], [0.0, (1 - r) + 2.5 * r]])
    torch.testing.assert_close(shrunk[0], expected.double())
    # a multiple of the identity needs no shrinkage beyond its own target: rho = 1, same matrix
    eye = 3 * torch.eye(3, dtype=torch.float64)[None]
    rho, mu = shrinkage_intensity(eye, 5)
    assert float(mu) == 3.0 and float(rho) == 1.0


def test_ledoit_wolf_fit_shrinks_towards_the_scaled_identity():
    emb = _emb(np.random.default_rng(13), 6)  # few samples for d = 5
    plain, _ = fit_gaussians(GaussianStats.from_batch(emb), 0.0 + 1e-6)
    shrunk, _ = fit_gaussians(GaussianStats.from_batch(emb), 1e-6, shrinkage="ledoit-wolf")
    assert shrunk.shrinkage_rho is not None and plain.shrinkage_rho is None
    assert torch.all((shrunk.shrinkage_rho > 0) & (shrunk.shrinkage_rho <= 1))
    cov = GaussianStats.from_batch(emb).covariance()
    rho, mu = shrinkage_intensity(cov.clone(), 6)
    target = (1 - rho)[:, None, None] * cov + (rho * mu)[:, None, None] * torch.eye(5)
    target.diagonal(dim1=1, dim2=2).add_(1e-6)
    w = shrunk.full().double()
    torch.testing.assert_close(
        w @ target @ w.transpose(1, 2),
        torch.eye(5, dtype=torch.float64).expand(6, 5, 5),
        rtol=1e-3,
        atol=1e-3,
    )
    with pytest.raises(PadimError, match="unknown shrinkage"):
        fit_gaussians(GaussianStats.from_batch(emb), shrinkage="oracle")


@pytest.mark.parametrize("read_positions", [1000, 5])
def test_statistics_from_embeddings_on_disk_equal_the_streamed_sums(read_positions, monkeypatch):
    """Sums made chunk by chunk from a disk store (two-pass, read a few positions at a time)
    give the streamed sums' covariance and mean, and the same Gaussians and distances."""
    from padim.core import statistics
    from padim.core.holdout import HoldoutStore
    from padim.core.layout import position_chunks

    monkeypatch.setattr(statistics, "STORE_READ_BYTES", read_positions * 20 * 30 * 8)

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(5, 30, 12, 12, generator=gen) * 3 + 1 for _ in range(4)]
    held = torch.randn(3, 30, 12, 12, generator=gen)
    streamed = GaussianStats.from_batches(batches)
    with HoldoutStore() as store:
        for b in batches:
            store.add(b)
        stored = GaussianStats.from_store(store)
        for i, part in enumerate(position_chunks(stored.positions)):
            cov = stored._chunk_covariance(i, part, stored.count)
            torch.testing.assert_close(
                cov, streamed._chunk_covariance(i, part, streamed.count), rtol=1e-10, atol=1e-10
            )
        a, held_a = fit_gaussians(GaussianStats.from_store(store), holdout=held, consume=True)
    b, held_b = fit_gaussians(streamed.copy(), holdout=held)
    torch.testing.assert_close(a.whitening, b.whitening, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(held_a.mahalanobis, held_b.mahalanobis, rtol=1e-6, atol=1e-6)
