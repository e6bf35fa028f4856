"""Reading images safely as 8-bit RGB, from files, bytes (uploads), PIL images or arrays;
torch-free, so every runtime (torch, ONNX, OpenVINO) and the service share it.

Every failure is a `BadImage` (a `PadimError`) with a one-line message and a short code that
the REST service returns to clients: empty, not_an_image, unreadable, too_small, too_many_pixels.
The pixel count is checked from the header, before any pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from padim.errors import BadImage, PadimError
from padim.files import file_sha256

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class LazyImage(Protocol):
    """An image read when needed (a video frame: `padim.data.video.FrameRef`)."""

    def load_image(self) -> Image.Image: ...


ImageInput = str | Path | Image.Image | np.ndarray | LazyImage
"""What `Padim.fit` / `predict` accept per image: a path, a PIL image, an array or a lazy
image (a video frame)."""
MIN_SIDE = 2


CHUNK_PIXELS = 1 << 20  # wide pixel data is converted this many pixels at a time

# Bytes per pixel of a decoded image by Pillow mode (others: 8, to be safe).
MODE_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "PA": 2,
    "La": 2,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "RGBA": 4,
    "RGBa": 4,
    "RGBX": 4,
    "CMYK": 4,
    "I": 4,
    "F": 4,
}
RGB_COST = 12  # decoding to RGB: the decoded image (3), a working copy (3), the RGB array (6)


def decode_cost(mode: str) -> int:
    """Bytes per pixel that decoding an image of this mode to 8-bit RGB holds at its peak: the
    decoded pixels and a working copy of them, then the RGB image and its array."""
    return 2 * MODE_BYTES.get(mode, 8) + 6


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit / 32-bit integer or float pixel data into 0..255, a block of rows at a time
    (float64 or int64 only for one block: memory stays near the array's own size)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    out = np.empty(arr.shape, np.uint8)
    rows = max(1, CHUNK_PIXELS // max(1, arr[:1].size))
    floating = np.issubdtype(arr.dtype, np.floating)
    if floating:
        top = 1.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 255.0
    else:
        wide = arr.max(initial=0) > 255  # 16-bit range: round(v / 257), in integers
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows]
        if floating:
            a = np.rint(np.nan_to_num(block.astype(np.float64)) / top * 255.0)
        else:
            a = block.astype(np.int64)
            if wide:
                a = (a + 128) // 257
        out[start : start + rows] = np.clip(a, 0, 255)
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image (L, LA, P, RGBA, CMYK, I;16, I, F, 1) as 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def array_to_image(arr: np.ndarray) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 arrays of any numeric dtype as an RGB image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise BadImage(
            f"image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}", "not_an_image"
        )
    return to_rgb(Image.fromarray(_to_uint8(arr)))


def open_image(source: BinaryIO, name: str, max_pixels: int | None = None) -> Image.Image:
    """Decode an image stream as RGB (EXIF rotation applied). `max_pixels` (default: Pillow's
    limit) refuses images whose header declares more pixels, before decoding them; it counts
    8-bit RGB pixels, so wider formats (16-bit, float, CMYK) are allowed proportionally fewer:
    decoding never holds more than max_pixels x 12 bytes."""
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if limit is not None and width * height * max(RGB_COST, decode_cost(img.mode)) > (
                    limit * RGB_COST
                ):
                    shown = limit * RGB_COST // max(RGB_COST, decode_cost(img.mode))
                    raise _bomb(name, width, height, shown)
                if width < MIN_SIDE or height < MIN_SIDE:
                    raise BadImage(f"image too small ({width}x{height}): {name}", "too_small")
                img.load()
                return to_rgb(ImageOps.exif_transpose(img) or img)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(
            f"image declares too many pixels (decompression bomb?): {name}", "too_many_pixels"
        ) from None
    except UnidentifiedImageError:
        raise BadImage(
            f"not an image file (or an unsupported format): {name}", "not_an_image"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"cannot read image {name}: {exc}", "unreadable") from None


def _bomb(name: str, width: int, height: int, limit: int) -> BadImage:
    return BadImage(
        f"image declares too many pixels ({width}x{height} > {limit:,}; decompression bomb?): "
        f"{name}",
        "too_many_pixels",
    )


def read_image(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB, with a clear error if it fails."""
    path = Path(path)
    if not path.is_file():
        raise BadImage(f"image not found: {path}", "not_found")
    if path.stat().st_size == 0:
        raise BadImage(f"empty file: {path}", "empty")
    with path.open("rb") as f:
        return open_image(f, str(path))


def decode_image(data: bytes, name: str = "upload", max_pixels: int | None = None) -> Image.Image:
    """Decode uploaded bytes as 8-bit RGB, with a clear error if they are not a usable image."""
    if not data:
        raise BadImage(f"empty body: no image bytes in {name}", "empty")
    return open_image(io.BytesIO(data), name, max_pixels)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PadimError(f"not a folder: {folder}")
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def as_image(item: ImageInput) -> Image.Image:
    """A path, PIL image or array as an 8-bit RGB PIL image."""
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        return array_to_image(item)
    if isinstance(item, str | Path):
        return read_image(item)
    if callable(getattr(item, "load_image", None)):
        return to_rgb(item.load_image())
    raise TypeError(
        f"an image is a path, a PIL image, an array or a video frame, not {type(item).__name__}"
    )


def image_digest(item: ImageInput) -> str:
    """SHA-256 of an image: of its file's bytes for a path (what `sha256sum` says), else of
    its RGB pixels. The records and a model's lineage name images by it."""
    if isinstance(item, str | Path):
        try:
            return file_sha256(item)
        except OSError as exc:
            raise BadImage(f"cannot read {item}: {exc.strerror}", "unreadable") from None
    return hashlib.sha256(np.ascontiguousarray(as_image(item)).tobytes()).hexdigest()
