import numpy as np
import pytest
from PIL import Image

from padim.data import (
    Preprocess,
    folder_test_set,
    mvtec_test_set,
    read_image,
    read_mask,
    training_images,
)
from padim.errors import PadimError


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("L", ".png"), ("RGBA", ".png"), ("P", ".png"), ("RGB", ".jpg"), ("RGB", ".bmp"),
     ("RGB", ".tiff"), ("LA", ".png"), ("CMYK", ".jpg")],
)
def test_read_image_converts_everything_to_rgb(tmp_path, mode, suffix):
    path = tmp_path / f"img{suffix}"
    Image.new(mode, (20, 10)).save(path)
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (20, 10)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    arr = np.full((8, 8), 32896, dtype=np.uint16)  # mid-grey in 16 bits
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    px = np.asarray(read_image(path))
    assert px.shape == (8, 8, 3)
    assert abs(int(px[0, 0, 0]) - 128) <= 1


def test_rgba_transparency_is_flattened(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (4, 4), (200, 100, 50, 0)).save(path)
    assert np.asarray(read_image(path)).max() == 0  # fully transparent -> black background


@pytest.mark.parametrize("content", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_non_images_are_clear_errors(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(PadimError, match=r"bad\.png"):
        read_image(path)


def test_truncated_png_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(PadimError, match="cannot read image"):
        read_image(path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(PadimError, match="decompression bomb"):
        read_image(path)


def test_one_pixel_image_is_refused(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(PadimError, match="too small"):
        read_image(path)


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
    samples = folder_test_set(category / "test" / "good", [category / "test" / "square"],
                              category / "ground_truth" / "square")
    assert len(samples) == 10
    assert all(s.mask_path.stem == f"{s.path.stem}_mask" for s in samples if s.label)
