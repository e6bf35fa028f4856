"""Pictures people look at: heat maps coloured on the model's normalised score (fixed for every
image: 0.5, the threshold, is mid-scale), overlays with the predicted mask outlined and the
defect regions boxed, masks, PNG encoding. Torch- and matplotlib-free (report figures:
evaluation.figures)."""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from padim.data.regions import Region
from padim.files import write_bytes_atomic
from padim.normalise import ScoreScale

BOX_COLOUR = (255, 0, 255)  # magenta: not a colour of the jet scale


# matplotlib's "jet": (x, value) break points per channel, linear in between.
JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
LUT_SIZE = 256


def _channel_lut(points: tuple[tuple[float, float], ...], n: int = LUT_SIZE) -> np.ndarray:
    """One channel's n-entry table, computed as matplotlib builds a segmented colour map."""
    x = np.array([p[0] for p in points]) * (n - 1)
    y = np.array([p[1] for p in points])
    xind = (n - 1) * np.linspace(0, 1, n)
    ind = np.searchsorted(x, xind)[1:-1]
    distance = (xind[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    return np.clip(
        np.concatenate([[y[0]], distance * (y[ind] - y[ind - 1]) + y[ind - 1], [y[-1]]]), 0.0, 1.0
    )


JET_LUT = (np.stack([_channel_lut(JET[c]) for c in ("red", "green", "blue")], axis=1) * 255).astype(
    np.uint8
)
"""(256, 3) uint8: the colours of matplotlib's jet, so pictures need no matplotlib."""


def heatmap_rgb(amap: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Anomaly map (H, W) -> uint8 RGB picture, jet colours on the fixed range [vmin, vmax]."""
    norm = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    index = norm * LUT_SIZE
    index[index == LUT_SIZE] = LUT_SIZE - 1
    return JET_LUT[index.astype(np.int64)]


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask (4-neighbourhood)."""
    m = mask.astype(bool)
    interior = m.copy()
    interior[1:, :] &= m[:-1, :]
    interior[:-1, :] &= m[1:, :]
    interior[:, 1:] &= m[:, :-1]
    interior[:, :-1] &= m[:, 1:]
    return m & ~interior


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    mask: np.ndarray | None,
    vmin: float,
    vmax: float,
    alpha: float = 0.45,
    regions: Sequence[Region] = (),
) -> np.ndarray:
    """Heat map blended over the image, the predicted mask outlined in white and each region's
    bounding box drawn in magenta."""
    heat = heatmap_rgb(amap, vmin, vmax).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * heat
    out = out.clip(0, 255).astype(np.uint8)
    if mask is not None:
        out[mask_outline(mask)] = (255, 255, 255)
    for region in regions:
        draw_box(out, region)
    return out


def draw_box(picture: np.ndarray, region: Region, width: int = 2) -> None:
    """A region's bounding box, `width` pixels wide, drawn just outside it where there is
    room (in place)."""
    h, w = picture.shape[:2]
    x0, y0 = max(region.x - width, 0), max(region.y - width, 0)
    x1, y1 = min(region.x + region.width + width, w), min(region.y + region.height + width, h)
    picture[y0 : y0 + width, x0:x1] = BOX_COLOUR
    picture[max(y1 - width, 0) : y1, x0:x1] = BOX_COLOUR
    picture[y0:y1, x0 : x0 + width] = BOX_COLOUR
    picture[y0:y1, max(x1 - width, 0) : x1] = BOX_COLOUR


PICTURE_KINDS = ("overlay", "heatmap", "mask", "input")
"""Every picture of a scored image; `predict` writes the first three as files."""
PICTURES = PICTURE_KINDS[:3]


def hatch(picture: np.ndarray, where: np.ndarray | None) -> np.ndarray:
    """`picture` with grey diagonal stripes where nothing was inspected (photo pixels outside
    the reference part after alignment): visibly not "good", just not looked at."""
    if where is None or not where.any():
        return picture
    out = picture.copy()
    rows, cols = np.nonzero(where)
    stripe = ((rows + cols) // 6) % 2 == 0
    out[rows[stripe], cols[stripe]] = (128, 128, 128)
    out[rows[~stripe], cols[~stripe]] //= 2
    return out


def render_pictures(
    image: np.ndarray,
    amap: np.ndarray,
    threshold: float,
    kinds: Sequence[str],
    scale: ScoreScale | None = None,
    regions: Sequence[Region] = (),
    uninspected: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """A scored image's pictures as arrays, by kind: overlay, heatmap, mask (amap > threshold)
    and input. `image` is the (3, H, W) model input in [0, 1], or the photo itself as an
    (H, W, 3) uint8 array (pictures at the photo's resolution: `Preprocess.map_to_image` brings
    the map there); `amap` is the (H, W) anomaly map, coloured by its normalised value
    (`scale`, the model's; without one, a tenth of the threshold per unit), so colours mean
    the same on every picture; `regions` are boxed on the overlay; `uninspected` pixels
    (bool, the photo's shape) are hatched on the overlay and heat map."""
    scale = scale if scale is not None else ScoreScale.of(threshold, None)
    mask = amap > threshold

    def picture() -> np.ndarray:
        return image if image.dtype == np.uint8 else to_picture(image)

    colours = functools.cache(lambda: scale(amap))  # heat map and overlay share it

    make: dict[str, Callable[[], np.ndarray]] = {
        "overlay": lambda: hatch(
            overlay(picture(), colours(), mask, 0.0, 1.0, regions=regions), uninspected
        ),
        "heatmap": lambda: hatch(heatmap_rgb(colours(), 0.0, 1.0), uninspected),
        "mask": lambda: mask,
        "input": picture,
    }
    return {kind: make[kind]() for kind in kinds}


def save_pictures(
    folder: Path,
    name: str,
    image: np.ndarray,
    amap: np.ndarray,
    threshold: float,
    kinds: Sequence[str] = PICTURES,
    scale: ScoreScale | None = None,
    regions: Sequence[Region] = (),
    uninspected: np.ndarray | None = None,
) -> dict[str, str]:
    """`render_pictures`, each written atomically as folder/<name>_<kind>.png; returns the file
    names by kind."""
    names = {}
    pictures = render_pictures(image, amap, threshold, kinds, scale, regions, uninspected)
    for kind, picture in pictures.items():
        names[kind] = f"{name}_{kind}.png"
        save_png(folder / names[kind], picture)
    return names


def png_bytes(array: np.ndarray, compress_level: int = 6) -> bytes:
    """An RGB or greyscale/boolean array encoded as PNG."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def save_png(path: str | Path, array: np.ndarray) -> None:
    """Write an RGB or greyscale/boolean array as PNG, atomically."""
    write_bytes_atomic(path, png_bytes(array))


def to_picture(x: np.ndarray) -> np.ndarray:
    """(3, H, W) float image in [0, 1] -> (H, W, 3) uint8 picture."""
    x = np.asarray(x)
    return (np.clip(x.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
