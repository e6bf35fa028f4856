"""Rd-MVTec perturbation: seeded per image, image and mask transformed alike."""

import numpy as np
import pytest
import torch
from PIL import Image

from padim.data.pictures import to_picture
from padim.data.preprocess import Preprocess
from padim.errors import PadimError
from padim.evaluation.perturb import (
    PAPER_CROP_FRACTION,
    RandomRotateCrop,
    make_perturbation,
    training_loader,
)


def _marked(side: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A black image with a white square and the square's mask."""
    image = torch.zeros(3, side, side)
    mask = torch.zeros(side, side, dtype=torch.bool)
    image[:, 20:36, 24:40] = 1.0
    mask[20:36, 24:40] = True
    return image, mask


def test_same_index_same_draw_other_index_other_draw():
    p = RandomRotateCrop(seed=3)
    assert p.draw(5, 256) == p.draw(5, 256)
    draws = {p.draw(i, 256) for i in range(20)}
    assert len(draws) == 20
    angles = [d[0] for d in draws]
    assert max(abs(a) for a in angles) <= 10 and np.std(angles) > 2
    for _, top, left, crop in draws:
        assert crop == 224 and 0 <= top <= 32 and 0 <= left <= 32
    assert RandomRotateCrop(seed=4).draw(5, 256) != p.draw(5, 256)
    assert p.for_training().draw(5, 256) != p.draw(5, 256)  # train and test streams differ


def test_training_loader_perturbs_from_the_training_stream():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)
    pre = Preprocess(64, 56)
    p = make_perturbation("rd-mvtec", 64, 56, seed=2)
    assert p.train and not make_perturbation("rd-mvtec-test", 64, 56).train
    loaded = training_loader(p, pre)(3, image)
    source = torch.from_numpy(Preprocess(64, None).image(Image.fromarray(image)))
    expected, _ = p.for_training().apply(3, source, None, 56)
    assert loaded.shape == (3, 56, 56) and torch.equal(loaded, expected)
    assert not torch.equal(loaded, torch.from_numpy(pre.image(Image.fromarray(image))))


def test_image_and_mask_move_together():
    image, mask = _marked()
    p = RandomRotateCrop(seed=0)
    for index in range(8):
        img, m = p.apply(index, image, mask, out_size=56)
        assert img.shape == (3, 56, 56) and m.shape == (56, 56)
        bright = img[0] > 0.5
        overlap = (bright & m).sum() / (bright | m).sum()
        assert overlap > 0.8, f"image {index}: mask and image disagree (IoU {overlap:.2f})"


def test_no_rotation_full_crop_is_identity():
    image, mask = _marked()
    p = RandomRotateCrop(max_degrees=0.0, crop_fraction=1.0)
    img, m = p.apply(0, image, mask, out_size=64)
    assert torch.allclose(img, image, atol=1e-6) and torch.equal(m, mask)


def test_geometry_follows_the_model():
    assert make_perturbation("rd-mvtec", 256, 224).crop_fraction == pytest.approx(224 / 256)
    assert make_perturbation("rd-mvtec", 256, None).crop_fraction == PAPER_CROP_FRACTION
    assert make_perturbation("rd-mvtec", 320, 240).crop_fraction == pytest.approx(0.75)
    with pytest.raises(PadimError, match="unknown perturbation"):
        make_perturbation("blur", 256, 224)


def test_native_photos_are_the_protocols_at_their_own_resolution(tmp_path):
    """Models that align register perturbed photos at their own resolution: a square photo of
    the protocol's side is exactly `perturbed_sample`'s image and mask; a wide photo keeps its
    aspect ratio (a square resize first would distort it) and its mask moves with it."""
    from padim.evaluation.perturb import native_photo, perturbed_sample

    rng = np.random.default_rng(0)
    square = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:30, 30:44] = 255
    Image.fromarray(square).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    p = make_perturbation("rd-mvtec-test", 64, 56, seed=3)
    photo, moved = native_photo(p, 5, tmp_path / "a.png", tmp_path / "a_mask.png")
    img, want = perturbed_sample(
        p, Preprocess(64, 56), 5, tmp_path / "a.png", tmp_path / "a_mask.png"
    )
    assert np.array_equal(photo, to_picture(img.numpy())) and np.array_equal(moved, want.numpy())

    wide = rng.integers(0, 255, (40, 160, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "w.png")
    photo, _ = native_photo(p, 5, tmp_path / "w.png")
    assert photo.shape == (35, 140, 3)  # 56/64 of each side, not a square
