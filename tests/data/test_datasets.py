import numpy as np
import pytest
from PIL import Image

from padim.data.datasets import folder_test_set, mvtec_test_set, read_mask, training_images
from padim.data.preprocess import Preprocess
from padim.errors import PadimError


def test_preprocess_geometry_and_mask_alignment():
    pre = Preprocess(size=64, crop=48)
    arr = np.zeros((100, 100, 3), np.uint8)
    arr[40:60, 40:60] = 255
    mask = np.zeros((100, 100), bool)
    mask[40:60, 40:60] = True
    x = pre.image(Image.fromarray(arr))
    m = pre.mask(mask)
    assert x.shape == (3, 48, 48) and m.shape == (48, 48)
    assert float(x.max()) <= 1.0
    bright = x[0] > 0.5
    assert (bright & m).sum() / m.sum() > 0.8  # the bright square and its mask coincide


def test_preprocess_rejects_bad_geometry():
    with pytest.raises(PadimError, match="--crop"):
        Preprocess(size=64, crop=128)
    with pytest.raises(PadimError, match="--size"):
        Preprocess(size=4, crop=None)


def test_mvtec_layout(category):
    assert len(training_images(category)) == 12
    samples = mvtec_test_set(category)
    assert sum(s.label for s in samples) == 6
    assert all(s.mask_path is not None for s in samples if s.label)
    assert read_mask(samples[-1].mask_path).any()


def test_missing_mask_is_a_clear_error(tmp_path, category):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(category, copy)
    (copy / "ground_truth" / "square" / "002_mask.png").unlink()
    with pytest.raises(PadimError, match=r"missing ground-truth mask.*002"):
        mvtec_test_set(copy)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(PadimError, match="no images"):
        training_images(tmp_path)
    with pytest.raises(PadimError, match="not found"):
        training_images(tmp_path / "absent")


def test_folder_test_set_matches_masks_by_stem(category):
    samples = folder_test_set(
        category / "test" / "good",
        [category / "test" / "square"],
        category / "ground_truth" / "square",
    )
    assert len(samples) == 10
    assert all(s.mask_path.stem == f"{s.path.stem}_mask" for s in samples if s.label)


@pytest.mark.parametrize(
    ("shape", "size", "crop"),
    [
        ((100, 100), 64, 48),
        ((256, 256), 256, 224),
        ((37, 91), 64, None),
        ((900, 1200), 256, 224),
        ((64, 64), 128, None),
    ],
)
def test_mask_geometry_is_torch_nearest(shape, size, crop):
    """Masks follow torch's `interpolate(mode="nearest")` exactly (what torchvision did)."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    mask = rng.random(shape) > 0.7
    t = torch.from_numpy(mask.astype(np.uint8))[None, None]
    expected = F.interpolate(t, size=(size, size), mode="nearest")[0, 0].numpy() > 0
    if crop is not None:
        top = round((size - crop) / 2.0)
        expected = expected[top : top + crop, top : top + crop]
    assert np.array_equal(Preprocess(size, crop).mask(mask), expected)
