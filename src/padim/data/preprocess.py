"""The model-input geometry: resize, then optionally centre-crop (the paper: 256 then 224).

Torch-free and done with Pillow, so every runtime (torch, ONNX, OpenVINO) sees identical pixels;
masks follow the images exactly (nearest neighbour, torch's index rule).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from padim import options
from padim.data.images import ImageInput, as_image
from padim.data.regions import Region, find_regions, moved
from padim.errors import PadimError

MIN_SIDE = 16
MAX_SIDE = 16384  # a model input side beyond this is a mistake (or a hostile model file)
AUTO_MULTIPLE = 16  # --size auto rounds sides to this (the deepest tap's stride)
AUTO_SAMPLE = 64  # training images whose shapes --size auto looks at
T = TypeVar("T")

Size = int | tuple[int, int]
"""A geometry: one side (square) or (width, height)."""


def as_wh(size: int | Sequence[int]) -> tuple[int, int]:
    """(width, height) of a side or of a [width, height] pair (as stored in JSON)."""
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        return int(size), int(size)
    if isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2:
        w, h = size
        if _is_int(w) and _is_int(h):
            return int(w), int(h)
    raise PadimError(f"a size is a whole number or WIDTHxHEIGHT, got {size!r}")


def to_json(wh: tuple[int, int]) -> int | list[int]:
    """A side for square geometries (as model files always stored them), else [width, height]."""
    return wh[0] if wh[0] == wh[1] else [wh[0], wh[1]]


def parse_size(text: str) -> int | tuple[int, int]:
    """ "256" -> 256; "400x160" -> (400, 160) (width x height)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise PadimError(f"expected N or WIDTHxHEIGHT, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise PadimError(f"expected N or WIDTHxHEIGHT, got {text!r}")


def resolve_crop(size: object, crop: object) -> Size | None:
    """`crop` as given, with "default" replaced by `default_crop(size)`."""
    if crop == "default":
        return default_crop(size)
    if crop is None or isinstance(crop, int | tuple):
        return crop
    if isinstance(crop, list):
        return as_wh(crop)
    raise PadimError(f"--crop must be N, WxH or none, got {crop!r}")


def default_crop(size: object) -> int | None:
    """The paper's 224 x 224 centre crop for square sizes of at least 224 (the default size is
    256); no crop for smaller, non-square or automatic sizes."""
    if isinstance(size, int) and not isinstance(size, bool) and size >= 224:
        return 224
    return None


def auto_size(
    shapes: Sequence[tuple[int, int]], budget: int = 256 * 256, multiple: int = AUTO_MULTIPLE
) -> tuple[int, int]:
    """(width, height) with the images' median aspect ratio and about `budget` pixels, each
    side a multiple of `multiple` (the backbone's deepest stride)."""
    if not shapes:
        raise PadimError("--size auto needs training images to measure")
    aspect = float(np.median([w / h for w, h in shapes]))
    height = (budget / aspect) ** 0.5
    width = aspect * height

    def side(x: float) -> int:
        return int(min(MAX_SIDE, max(2 * multiple, round(x / multiple) * multiple)))

    return side(width), side(height)


def native_size(
    shapes: Sequence[tuple[int, int]], multiple: int = AUTO_MULTIPLE
) -> tuple[int, int]:
    """(width, height): the images' median size, each side rounded to a multiple of `multiple`
    (the backbone's deepest stride; 1130x460 -> 1136x464)."""
    if not shapes:
        raise PadimError("--size native needs training images to measure")
    width, height = (float(np.median([s[i] for s in shapes])) for i in (0, 1))

    def side(x: float) -> int:
        return int(min(MAX_SIDE, max(2 * multiple, round(x / multiple) * multiple)))

    return side(width), side(height)


def image_shape(item: ImageInput) -> tuple[int, int]:
    """(width, height) of an image without decoding its pixels (header only for files)."""
    if isinstance(item, Image.Image):
        return item.size
    if isinstance(item, np.ndarray):
        return int(item.shape[1]), int(item.shape[0])
    if not isinstance(item, str | Path):
        return as_image(item).size  # a lazy image (a video frame): decoded
    try:
        with Image.open(item) as img:
            return img.size
    except (OSError, ValueError) as exc:
        raise PadimError(f"cannot read image {item}: {exc}") from None


@dataclass(frozen=True)
class Preprocess:
    """Resize to `size`, then optionally centre-crop to `crop` (each a side or (width, height))."""

    size: Size = options.SIZE.default
    crop: Size | None = 224

    def __post_init__(self) -> None:
        for name, value in (("--size", self.size), ("--crop", self.crop)):
            if value is None:
                continue
            if isinstance(value, list):
                object.__setattr__(self, name[2:], tuple(value))
                value = tuple(value)
            try:
                wh = as_wh(value)
            except PadimError:
                raise PadimError(
                    f"{name} must be a whole number or WIDTHxHEIGHT, got {value!r}"
                ) from None
            if not all(MIN_SIDE <= v <= MAX_SIDE for v in wh):
                raise PadimError(
                    f"{name} sides must be from {MIN_SIDE} to {MAX_SIDE}, got {value!r}"
                )
        if self.crop is not None:
            (cw, ch), (w, h) = as_wh(self.crop), as_wh(self.size)
            if cw > w or ch > h:
                raise PadimError(f"--crop ({self.crop!r}) must fit inside --size ({self.size!r})")

    @property
    def size_wh(self) -> tuple[int, int]:
        return as_wh(self.size)

    @property
    def crop_wh(self) -> tuple[int, int] | None:
        return None if self.crop is None else as_wh(self.crop)

    @property
    def output_wh(self) -> tuple[int, int]:
        """(width, height) of the model input."""
        return self.crop_wh or self.size_wh

    @property
    def output_hw(self) -> tuple[int, int]:
        """(height, width) of the model input, as tensors and maps are shaped."""
        w, h = self.output_wh
        return h, w

    @property
    def is_square(self) -> bool:
        w, h = self.output_wh
        return w == h and self.size_wh[0] == self.size_wh[1]

    def image(self, img: Image.Image) -> np.ndarray:
        """RGB PIL image -> (3, H, W) float32 in [0, 1]."""
        return resize_crop(img, self.size_wh, self.crop_wh)

    def stack(self, items: Sequence[ImageInput]) -> np.ndarray:
        """Paths, PIL images or arrays -> (B, 3, H, W) float32 in [0, 1]."""
        return np.stack([self.image(as_image(item)) for item in items])

    def stream(self, chunks: Iterable[Sequence[ImageInput]]) -> Iterator[np.ndarray]:
        """`stack` of each chunk, the next one decoded in a background thread while the caller
        works on the current one (Pillow releases the GIL while decoding and resizing), so
        reading large images overlaps the backbone's forward pass."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="padim-decode") as pool:
            pending: Future[np.ndarray] | None = None
            for chunk in chunks:
                ahead = pool.submit(self.stack, chunk)
                if pending is not None:
                    yield pending.result()
                pending = ahead
            if pending is not None:
                yield pending.result()

    def map_to_image(self, amap: np.ndarray, image_wh: tuple[int, int]) -> np.ndarray:
        """An (H, W) anomaly map at the model input -> the original image's (h, w): the crop put
        back where it came from (the cropped-away border gets the map's minimum: no evidence),
        then bilinear resizing, so maps and masks overlay the original photo."""
        w, h = self.size_wh
        if self.crop_wh is not None and self.crop_wh != (w, h):
            cw, ch = self.crop_wh
            top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
            canvas = np.full((h, w), amap.min(), np.float32)
            canvas[top : top + ch, left : left + cw] = amap
            amap = canvas
        size = (int(image_wh[0]), int(image_wh[1]))
        if (amap.shape[1], amap.shape[0]) == size:
            return np.asarray(amap, np.float32)
        resized = Image.fromarray(np.ascontiguousarray(amap, np.float32)).resize(
            size, Image.Resampling.BILINEAR
        )
        return np.asarray(resized, np.float32)

    def uninspected(self, image_wh: tuple[int, int]) -> None:
        """Photo pixels outside what the model sees: none to mark for a plain resize and crop
        (the cropped border carries no evidence, see `map_to_image`)."""
        return None

    def regions(
        self,
        amap: np.ndarray,
        threshold: float,
        image_wh: tuple[int, int],
        min_area: int = 0,
        normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> list[Region]:
        """Defect regions of an (H, W) map at the model input, in pixels of the original
        image (`image_wh`): found on the map (upsampling a smooth map adds no region), then
        moved through the crop and scaled like `map_to_image`; `min_area` is in the image's
        pixels."""
        w, h = self.size_wh
        left = top = 0
        if self.crop_wh is not None and self.crop_wh != (w, h):
            cw, ch = self.crop_wh
            top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
        found = find_regions(amap, threshold, 0, normalise)
        placed = moved(found, (left, top), (image_wh[0] / w, image_wh[1] / h))
        return [r for r in placed if r.area >= min_area]

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """Boolean mask -> boolean (H, W) at the image's geometry (nearest neighbour)."""
        w, h = self.size_wh
        rows = nearest_indices(mask.shape[0], h)
        cols = nearest_indices(mask.shape[1], w)
        return centre_crop(mask[rows[:, None], cols[None, :]], self.crop_wh)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output index for nearest-neighbour resizing, as torch computes it
    (`interpolate(mode="nearest")`: floor(i * in / out) in float32)."""
    if n_in == n_out:
        return np.arange(n_out)
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def centre_crop(arr: np.ndarray, crop_wh: tuple[int, int] | None) -> np.ndarray:
    """The central crop (width, height) of the last two axes (offsets rounded as torchvision
    does)."""
    if crop_wh is None:
        return arr
    h, w = arr.shape[-2:]
    cw, ch = crop_wh
    top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
    return arr[..., top : top + ch, left : left + cw]


def resize_crop(image: Image.Image, size: Size, crop: Size | None) -> np.ndarray:
    """RGB image -> (3, H, W) float32 in [0, 1]: resize to `size` (bilinear, antialiased), then
    centre-crop to `crop` (sides or (width, height))."""
    wh = as_wh(size)
    if image.size != wh:
        image = image.resize(wh, Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    crop_wh = None if crop is None else as_wh(crop)
    if crop_wh is not None and crop_wh != wh:
        arr = centre_crop(arr, crop_wh)
    return np.ascontiguousarray(arr, dtype=np.float32) / np.float32(255.0)


def batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
