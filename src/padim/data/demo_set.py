"""The built-in demo task, made at run time (offline) from a real texture photo that
scikit-image ships (`pip install 'padim[demo]'`): good images are random crops of the photo's
upper part; test images are crops of its unseen lower part, some with synthetic defects
(scratches, stains, foreign material from another texture) whose masks are exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from padim import options
from padim.errors import PadimError
from padim.extras import require

TEXTURES = options.DEMO_TEXTURE.choices or ()
CROP = 160
SPLIT_ROW = 300  # train crops come from rows [0, 300), test crops from rows [300, 512)
N_TRAIN, N_TEST_GOOD, N_PER_DEFECT = 48, 12, 8
DEFECTS = ("scratch", "stain", "foreign")


def _texture(name: str) -> np.ndarray:
    if name not in TEXTURES:
        raise PadimError(f"unknown demo texture {name!r}; choose from {', '.join(TEXTURES)}")
    skimage_data = require("skimage.data", "demo", "the demo data set")
    img = np.asarray(getattr(skimage_data, name)())
    return np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]


def _crop(tex: np.ndarray, rng: np.random.Generator, rows: tuple[int, int]) -> np.ndarray:
    y = int(rng.integers(rows[0], rows[1] - CROP + 1))
    x = int(rng.integers(0, tex.shape[1] - CROP + 1))
    patch = tex[y : y + CROP, x : x + CROP]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(patch)


def _scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    mask = Image.new("L", (CROP, CROP), 0)
    pts = [tuple(int(v) for v in rng.integers(20, CROP - 20, size=2)) for _ in range(3)]
    ImageDraw.Draw(mask).line(pts, fill=255, width=int(rng.integers(3, 6)))
    m = np.asarray(mask) > 0
    out = img.copy()
    out[m] = (out[m] * 0.25).astype(np.uint8) if rng.random() < 0.5 else 235
    return out, m


def _blob(rng: np.random.Generator, lo: int, hi: int) -> np.ndarray:
    mask = Image.new("L", (CROP, CROP), 0)
    cx, cy = rng.integers(40, CROP - 40, size=2)
    rx, ry = rng.integers(lo, hi, size=2)
    ImageDraw.Draw(mask).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(3)).point(lambda v: 255 if v > 127 else 0)
    return np.asarray(mask) > 0


def _stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    m = _blob(rng, 10, 24)
    out = img.astype(np.float32)
    tint = np.array([170.0, 90.0, 40.0])
    out[m] = 0.6 * out[m] + 0.4 * tint
    return out.astype(np.uint8), m


def _foreign(img: np.ndarray, rng: np.random.Generator, other: np.ndarray) -> tuple:
    m = _blob(rng, 14, 28)
    donor = _crop(other, rng, (0, other.shape[0]))
    out = img.copy()
    out[m] = donor[m]
    return out, m


def build_demo_set(root: Path, texture: str = options.DEMO_TEXTURE.default, seed: int = 0) -> Path:
    """Write an MVTec-layout demo category under root/<texture>; returns its folder."""
    rng = np.random.default_rng(seed)
    tex = _texture(texture)
    other = _texture("brick" if texture != "brick" else "gravel")
    cat = root / texture
    for i in range(N_TRAIN):
        _save(cat / "train" / "good" / f"{i:03d}.png", _crop(tex, rng, (0, SPLIT_ROW)))
    test_rows = (SPLIT_ROW, tex.shape[0])
    for i in range(N_TEST_GOOD):
        _save(cat / "test" / "good" / f"{i:03d}.png", _crop(tex, rng, test_rows))
    for defect in DEFECTS:
        for i in range(N_PER_DEFECT):
            img, m = _defective(defect, _crop(tex, rng, test_rows), rng, other)
            _save(cat / "test" / defect / f"{i:03d}.png", img)
            _save(cat / "ground_truth" / defect / f"{i:03d}_mask.png", m.astype(np.uint8) * 255)
    return cat


def _defective(
    kind: str, base: np.ndarray, rng: np.random.Generator, other: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if kind == "scratch":
        return _scratch(base, rng)
    if kind == "stain":
        return _stain(base, rng)
    return _foreign(base, rng, other)


def example_images(
    texture: str = options.DEMO_TEXTURE.default, seed: int = 1
) -> list[tuple[str, np.ndarray]]:
    """A few demo test images (two good, one per defect type), e.g. for the web page."""
    rng = np.random.default_rng(seed)
    tex = _texture(texture)
    other = _texture("brick" if texture != "brick" else "gravel")
    rows = (SPLIT_ROW, tex.shape[0])
    out = [(f"good/{i:03d}.png", _crop(tex, rng, rows)) for i in range(2)]
    for defect in DEFECTS:
        out.append((f"{defect}/000.png", _defective(defect, _crop(tex, rng, rows), rng, other)[0]))
    return out


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
