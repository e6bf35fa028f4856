"""The model-input geometry: resize, then optionally centre-crop (the paper: 256 then 224).

Torch-free and done with Pillow, so every runtime (torch, ONNX, OpenVINO) sees identical pixels;
masks follow the images exactly (nearest neighbour, torch's index rule).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from padim import options
from padim.data.images import ImageInput, as_image
from padim.errors import PadimError

MIN_SIDE = 16
MAX_SIDE = 16384  # a model input side beyond this is a mistake (or a hostile model file)
T = TypeVar("T")


@dataclass(frozen=True)
class Preprocess:
    """Resize to size x size, then optionally centre-crop to crop x crop."""

    size: int = options.SIZE.default
    crop: int | None = options.CROP.default

    def __post_init__(self) -> None:
        if not _is_int(self.size) or not MIN_SIDE <= self.size <= MAX_SIDE:
            raise PadimError(
                f"--size must be a whole number from {MIN_SIDE} to {MAX_SIDE}, got {self.size!r}"
            )
        if self.crop is not None and (
            not _is_int(self.crop) or not MIN_SIDE <= self.crop <= self.size
        ):
            raise PadimError(
                f"--crop must be between {MIN_SIDE} and --size ({self.size}), got {self.crop}"
            )

    @property
    def output_size(self) -> int:
        return self.crop if self.crop is not None else self.size

    def image(self, img: Image.Image) -> np.ndarray:
        """RGB PIL image -> (3, S, S) float32 in [0, 1]."""
        return resize_crop(img, self.size, self.crop)

    def stack(self, items: Sequence[ImageInput]) -> np.ndarray:
        """Paths, PIL images or arrays -> (B, 3, S, S) float32 in [0, 1]."""
        return np.stack([self.image(as_image(item)) for item in items])

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """Boolean H x W mask -> boolean (S, S) at the image's geometry (nearest neighbour)."""
        rows = nearest_indices(mask.shape[0], self.size)
        cols = nearest_indices(mask.shape[1], self.size)
        out = mask[rows[:, None], cols[None, :]]
        return centre_crop(out, self.crop)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output index for nearest-neighbour resizing, as torch computes it
    (`interpolate(mode="nearest")`: floor(i * in / out) in float32)."""
    if n_in == n_out:
        return np.arange(n_out)
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def centre_crop(arr: np.ndarray, crop: int | None) -> np.ndarray:
    """The central crop x crop of the last two axes (offsets rounded as torchvision does)."""
    if crop is None:
        return arr
    h, w = arr.shape[-2:]
    top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)
    return arr[..., top : top + crop, left : left + crop]


def resize_crop(image: Image.Image, size: int, crop: int | None) -> np.ndarray:
    """RGB image -> (3, S, S) float32 in [0, 1]: resize to size x size (bilinear, antialiased),
    then centre-crop to crop x crop."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    arr = centre_crop(arr, crop if crop is not None and crop < size else None)
    return np.ascontiguousarray(arr, dtype=np.float32) / np.float32(255.0)


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
