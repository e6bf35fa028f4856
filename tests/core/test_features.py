import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from padim.core.backbones import IMAGENET, StagedExtractor
from padim.core.features import Embedder, select_channels


def test_channel_selection_is_seeded_sorted_and_unique():
    a = select_channels(448, 100, seed=0)
    assert torch.equal(a, select_channels(448, 100, seed=0))
    assert not torch.equal(a, select_channels(448, 100, seed=1))
    assert a.numel() == 100 and a.unique().numel() == 100
    assert torch.equal(a, a.sort().values)
    assert torch.equal(select_channels(10, 10, 0), torch.arange(10))


class _Pyramid(nn.Module):
    """Three conv stages at strides 4, 8, 16 with 3, 5 and 7 channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 3, 4, stride=4)
        self.stages = [
            nn.Conv2d(3, 3, 1),
            nn.Conv2d(3, 5, 2, stride=2),
            nn.Conv2d(5, 7, 2, stride=2),
        ]


def test_embedder_gathers_then_upsamples_like_the_naive_concat():
    p = _Pyramid()
    extractor = StagedExtractor(p.stem, p.stages, taps=(0, 1, 2))
    idx = select_channels(15, 6, seed=3)
    emb = Embedder(extractor, IMAGENET, (3, 5, 7), idx)
    x = torch.rand(2, 3, 64, 64)
    got = emb(x)
    maps = extractor((x - emb.mean) / emb.std)
    naive = torch.cat(
        [maps[0]] + [F.interpolate(m, size=(16, 16), mode="nearest") for m in maps[1:]], dim=1
    )
    assert got.shape == (2, 6, 16, 16)
    # channels-last convolutions round differently: equal to float precision
    torch.testing.assert_close(got, naive[:, idx], rtol=1e-4, atol=1e-5)


def test_extractor_stops_after_its_last_tap():
    p = _Pyramid()
    extractor = StagedExtractor(p.stem, p.stages, taps=(0, 1))
    assert len(extractor.stages) == 2
    assert [m.shape[1] for m in extractor(torch.rand(1, 3, 32, 32))] == [3, 5]


def test_cpu_micro_batches_give_the_same_embeddings():
    p = _Pyramid()
    extractor = StagedExtractor(p.stem, p.stages, taps=(0, 1, 2))
    idx = select_channels(15, 9, seed=0)
    whole = Embedder(extractor, IMAGENET, (3, 5, 7), idx).eval()
    split = Embedder(extractor, IMAGENET, (3, 5, 7), idx, cpu_batch=2).eval()
    x = torch.rand(5, 3, 64, 64)
    assert torch.allclose(whole(x), split(x), atol=1e-6)


def test_semi_orthogonal_projection_is_seeded_and_orthonormal():
    from padim.core.features import semi_orthogonal

    w = semi_orthogonal(448, 100, seed=3)
    assert w.shape == (448, 100) and w.dtype == torch.float32
    torch.testing.assert_close(w.T @ w, torch.eye(100), atol=1e-5, rtol=0)
    assert torch.equal(w, semi_orthogonal(448, 100, seed=3))
    assert not torch.allclose(w, semi_orthogonal(448, 100, seed=4))


def test_full_rank_semi_orthogonal_scores_equal_all_channels(category):
    """An orthonormal rotation of all channels leaves Mahalanobis distances unchanged (the
    0.01 I regularisation is rotation-invariant too): the projection is applied right."""
    from padim import Padim

    images = sorted((category / "test").rglob("*.png"))
    common = {"size": 32, "crop": None, "device": "cpu", "channels": "all", "covariance": "full"}
    plain = Padim(**common).fit(category)
    rotated = Padim(**common, embedding="semi-orthogonal").fit(category)
    a, b = plain.score(images)[0], rotated.score(images)[0]
    np.testing.assert_allclose(b, a, rtol=1e-4)
