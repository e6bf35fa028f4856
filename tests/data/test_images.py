import io

import numpy as np
import pytest
from conftest import png_declaring
from PIL import Image

from padim.data.images import decode_image, read_image
from padim.errors import BadImage, PadimError


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("L", ".png"),
        ("RGBA", ".png"),
        ("P", ".png"),
        ("RGB", ".jpg"),
        ("RGB", ".bmp"),
        ("RGB", ".tiff"),
        ("LA", ".png"),
        ("CMYK", ".jpg"),
    ],
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


def test_decode_image_reads_bytes():
    buf = io.BytesIO()
    Image.new("L", (6, 4), 99).save(buf, format="PNG")
    img = decode_image(buf.getvalue(), "cam.png")
    assert img.mode == "RGB" and img.size == (6, 4) and np.asarray(img)[0, 0, 0] == 99


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty"),
        (b"GIF89a nonsense", "not_an_image"),
        (b"plain text", "not_an_image"),
        (png_declaring(0, 0), "not_an_image"),
        (png_declaring(1, 1), "too_small"),
        (png_declaring(60000, 60000), "too_many_pixels"),
    ],
)
def test_decode_image_bad_bytes_have_codes(data, code):
    with pytest.raises(BadImage) as info:
        decode_image(data, "upload.bin")
    assert info.value.code == code, str(info.value)
    assert "upload.bin" in str(info.value)


def test_decode_image_pixel_limit_is_checked_before_decoding():
    declared = png_declaring(5000, 5000)  # a 1x1 image's data behind a 25 MP header
    with pytest.raises(BadImage, match="too many pixels") as info:
        decode_image(declared, "big.png", max_pixels=1_000_000)
    assert info.value.code == "too_many_pixels"


def _to_uint8_float64(arr: np.ndarray) -> np.ndarray:
    """The conversion as it was written before (whole array in float64), as the reference."""
    a = arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating):
        top = 1.0 if np.nanmax(a, initial=0.0) <= 1.0 else 255.0
        a = np.nan_to_num(a) / top * 255.0
    elif a.max(initial=0) > 255:
        a = a / 257.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["uint16", "uint16_small", "int32", "float_unit", "float_wide"])
def test_wide_pixels_convert_exactly_without_float64_copies(kind, monkeypatch):
    from padim.data import images

    monkeypatch.setattr(images, "CHUNK_PIXELS", 1000)  # many blocks, odd block edges
    rng = np.random.default_rng(3)
    arr = {
        "uint16": np.arange(65536, dtype=np.uint16).reshape(256, 256),
        "uint16_small": rng.integers(0, 256, (97, 41)).astype(np.uint16),
        "int32": rng.integers(-70000, 1 << 30, (53, 77)).astype(np.int32),
        "float_unit": rng.random((61, 33)).astype(np.float32),
        "float_wide": (rng.random((61, 33)) * 300).astype(np.float32),
    }[kind]
    if kind.startswith("float"):
        arr[3, 4] = np.nan
    assert np.array_equal(images._to_uint8(arr), _to_uint8_float64(arr))


def test_wide_formats_get_fewer_pixels():
    """--max-pixels counts 8-bit RGB pixels; a 32-bit image of the same size is refused."""
    import io

    buf = io.BytesIO()
    Image.new("F", (64, 64)).save(buf, format="TIFF")
    data = buf.getvalue()
    with pytest.raises(BadImage, match="too many pixels") as err:
        decode_image(data, "f.tif", max_pixels=64 * 64)
    assert err.value.code == "too_many_pixels"
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), "rgb.png", max_pixels=64 * 64).size == (64, 64)
