"""Shared fixtures: small synthetic images and categories, a small fitted model, ../shared."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
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


def encoded(array: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    """An image array as the bytes of an image file (PNG by default)."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


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


def shared_category(relative: str) -> Path:
    """A real category from ../shared; a missing copy skips, or fails when
    PADIM_REQUIRE_SHARED=1 (as .ci/run sets)."""
    shared = Path(os.environ.get("PADIM_SHARED", REPO.parent / "shared"))
    root = shared / "data" / relative
    if not (root / "train" / "good").is_dir():
        reason = f"{relative} not found at {root}"
        if os.environ.get("PADIM_REQUIRE_SHARED") == "1":
            pytest.fail(reason + " (PADIM_REQUIRE_SHARED=1)")
        pytest.skip(reason)
    return root


@pytest.fixture(scope="session")
def bottle() -> Path:
    """The real MVTec AD bottle category from ../shared."""
    return shared_category("mvtec_ad/bottle")


@pytest.fixture(scope="session")
def bsdata() -> Path:
    """The real BSData ball-screw images (1130x460, tiny pits) from ../shared."""
    return shared_category("bsdata/ball_screw")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(args: list[str], log: Path, processes: list | None = None, scheme: str = "http"):
    """`padim serve ARGS` as users start it, in its own process; yields its base URL (the
    process is appended to `processes` when given)."""
    port = free_port()
    cmd = [sys.executable, "-m", "padim", "serve", *args, "--port", str(port)]
    cmd += ["--threads", "2", "--log-level", "warning"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    if processes is not None:
        processes.append(proc)
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"padim serve exited {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + "/v1/health", timeout=2, verify=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"padim serve did not start:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


# ----------------------------------------------------------------------------- catalogues

POSTGRES = os.environ.get("PADIM_TEST_POSTGRES")  # e.g. postgresql+psycopg://u@host:5432/db


def empty_postgres(url: str) -> str:
    """The test database emptied (every table dropped, the migrations' record too)."""
    from sqlalchemy import MetaData, text

    from padim.lifecycle.database import connect

    engine = connect(url)
    meta = MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path) -> tuple[str, str]:
    """(catalogue location, files folder) of an empty catalogue: a SQLite folder, and a real
    PostgreSQL when PADIM_TEST_POSTGRES names one (`.ci/run` starts one and sets
    PADIM_REQUIRE_POSTGRES, which makes it mandatory)."""
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    if request.param == "sqlite":
        return str(tmp_path / "catalogue"), str(tmp_path / "catalogue")
    if not POSTGRES:
        if os.environ.get("PADIM_REQUIRE_POSTGRES"):
            pytest.fail("PADIM_REQUIRE_POSTGRES is set but PADIM_TEST_POSTGRES is not")
        pytest.skip("PADIM_TEST_POSTGRES not set")
    return empty_postgres(POSTGRES), str(tmp_path / "files")


@pytest.fixture
def catalogue(location):
    """An empty catalogue, open."""
    from padim.lifecycle.database import open_catalogue

    return open_catalogue(*location)
