"""Shared fixtures: small synthetic images and categories, a small fitted model, ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # synthetic images are small so the whole suite stays fast


def texture(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A smooth random 'good' texture: low-frequency noise around a fixed base pattern."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.5 + 0.2 * np.sin(8 * np.pi * xx) * np.cos(6 * np.pi * yy)
    cells = -(-size // 8)
    noise = np.kron(rng.normal(0, 0.04, (cells, cells)), np.ones((8, 8)))[:size, :size]
    grey = np.clip(base + noise, 0, 1)
    rgb = np.stack([grey, grey * 0.9, grey * 0.8], axis=-1)
    return (rgb * 255).astype(np.uint8)


def with_defect(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright square defect and its exact mask."""
    size = img.shape[0]
    s = size // 5
    y, x = rng.integers(s, size - 2 * s, size=2)
    out = img.copy()
    out[y : y + s, x : x + s] = (255, 40, 40)
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[y : y + s, x : x + s] = True
    return out, mask


def part(size: tuple[int, int] = (320, 240), seed: int = 0) -> np.ndarray:
    """A part on a plain background: a bright body with holes, an edge and some texture."""
    import cv2

    w, h = size
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40, np.uint8)
    cv2.rectangle(img, (w // 4, h // 4), (3 * w // 4, 3 * h // 4), (200, 190, 180), -1)
    cv2.circle(img, (w // 3, h // 2), h // 10, (60, 60, 60), -1)
    cv2.circle(img, (2 * w // 3, h // 2 - 10), h // 14, (90, 80, 70), -1)
    cv2.line(img, (w // 4, h // 3), (3 * w // 4, 2 * h // 3), (120, 140, 160), 3)
    # texture with some extent (as a camera sees a surface), not independent pixels: resampling
    # would smooth those away, and any moved copy would look cleaner than the original
    noise = cv2.GaussianBlur(rng.normal(0, 12, img.shape).astype(np.float32), (0, 0), 1.5)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def moved(image: np.ndarray, angle: float, scale: float, shift: tuple[float, float]):
    """The image turned by `angle` degrees and scaled about its centre, then shifted; and the
    3x3 matrix of that motion (reference -> photo)."""
    import cv2

    h, w = image.shape[:2]
    m = np.vstack([cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale), [0, 0, 1]])
    m[:2, 2] += shift
    photo = cv2.warpAffine(image, m[:2], (w, h), borderValue=(40, 40, 40))
    return photo, m


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_category(
    root: Path, n_train: int = 12, n_good: int = 4, n_bad: int = 6, seed: int = 0
) -> Path:
    """A tiny MVTec-layout category with exact masks."""
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        save(root / "train" / "good" / f"{i:03d}.png", texture(rng))
    for i in range(n_good):
        save(root / "test" / "good" / f"{i:03d}.png", texture(rng))
    for i in range(n_bad):
        img, mask = with_defect(texture(rng), rng)
        save(root / "test" / "square" / f"{i:03d}.png", img)
        save(root / "ground_truth" / "square" / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    return root


@pytest.fixture(scope="session")
def category(tmp_path_factory) -> Path:
    return make_category(tmp_path_factory.mktemp("data") / "widget")


@pytest.fixture(scope="session")
def fitted(category):
    """A small fitted model (efficientnet_lite0, real weights, 64x64) shared by many tests."""
    from padim import Padim

    return Padim(size=SIZE, crop=None, batch_size=5, device="cpu").fit(category)


@pytest.fixture(scope="session")
def model_file(fitted, tmp_path_factory) -> Path:
    return fitted.save(tmp_path_factory.mktemp("models") / "widget.safetensors")


@pytest.fixture(scope="session")
def full_model_file(category, tmp_path_factory) -> Path:
    """The small model with the paper's full covariance (float16 whitening triangles)."""
    from padim import Padim

    model = Padim(size=SIZE, crop=None, batch_size=5, device="cpu", covariance="full")
    return model.fit(category).save(tmp_path_factory.mktemp("models") / "full.safetensors")


@pytest.fixture(scope="session")
def bottle() -> Path:
    """The real MVTec AD bottle category from ../shared; a missing copy skips, or fails when
    PADIM_REQUIRE_SHARED=1 (as .ci/run sets)."""
    shared = Path(os.environ.get("PADIM_SHARED", REPO.parent / "shared"))
    root = shared / "data" / "mvtec_ad" / "bottle"
    if not (root / "train" / "good").is_dir():
        reason = f"MVTec AD bottle not found at {root}"
        if os.environ.get("PADIM_REQUIRE_SHARED") == "1":
            pytest.fail(reason + " (PADIM_REQUIRE_SHARED=1)")
        pytest.skip(reason)
    return root


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height (for size-limit and bomb tests)."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


@pytest.fixture(scope="session")
def bottle_model_file(bottle, tmp_path_factory) -> Path:
    """A quick real model of bottle (efficientnet_lite0, 128x128), saved to a file."""
    from padim import Padim

    model = Padim(size=128, crop=None, device="cpu").fit(bottle)
    return model.save(tmp_path_factory.mktemp("bottle") / "bottle128.safetensors")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests leave files for people to look at (screenshots): $PADIM_ARTIFACTS or
    test-artifacts/ in the repository (git-ignored)."""
    path = Path(os.environ.get("PADIM_ARTIFACTS", REPO / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
