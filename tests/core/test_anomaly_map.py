import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from padim.core.anomaly_map import AnomalyMapper, gaussian_kernel1d


def test_kernel_is_normalised_with_radius_4_sigma():
    k = gaussian_kernel1d(4.0)
    assert k.numel() == 33
    assert float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    assert int(k.argmax()) == 16


@pytest.mark.parametrize("shape", [(1, 1, 50, 60), (3, 1, 37, 53), (16, 1, 40, 24)])
def test_smoothing_matches_scipy_mirror_mode(shape):
    """Every map of a batch on its own, whatever the number of rows (grouped or not evenly)."""
    rng = np.random.default_rng(0)
    img = rng.random(shape).astype(np.float32)
    got = AnomalyMapper(4.0).smooth(torch.from_numpy(img))[:, 0].numpy()
    for i in range(shape[0]):
        want = gaussian_filter(img[i, 0].astype(np.float64), sigma=4.0, mode="mirror", truncate=4.0)
        np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_smoothing_in_graphs_equals_the_eager_blur(monkeypatch):
    """Exported graphs blur with two plain convolutions (fixed shapes): the same maps."""
    mapper = AnomalyMapper(4.0)
    x = torch.rand(2, 1, 45, 70)
    eager = mapper.smooth(x)
    calls = []
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: calls.append(1) or True)
    torch.testing.assert_close(mapper.smooth(x), eager)
    assert calls  # the graph branch ran


def test_upsampling_to_input_size_and_constant_maps_stay_constant():
    mapper = AnomalyMapper(4.0)
    dist = torch.full((2, 8, 8), 3.0)
    out = mapper(dist, size=(32, 32))
    assert out.shape == (2, 1, 32, 32)
    assert torch.allclose(out, torch.full_like(out, 3.0), atol=1e-5)


def test_tiny_maps_fall_back_to_replicate_padding():
    out = AnomalyMapper(4.0)(torch.rand(1, 2, 2), size=(8, 8))
    assert out.shape == (1, 1, 8, 8)
    assert torch.isfinite(out).all()
    img = torch.rand(1, 1, 9, 12)  # sides below the kernel's radius: edges replicated
    want = gaussian_filter(img[0, 0].double().numpy(), sigma=4.0, mode="nearest", truncate=4.0)
    np.testing.assert_allclose(AnomalyMapper(4.0).smooth(img)[0, 0].numpy(), want, atol=1e-5)


def test_sigma_zero_disables_smoothing():
    dist = torch.rand(1, 4, 4)
    out = AnomalyMapper(0.0)(dist, size=(4, 4))
    assert torch.allclose(out[:, 0], dist)
