"""Labelled data sets and training folders.

Two layouts are understood: MVTec AD (`train/good`, `test/<type>`, `ground_truth/<type>/*_mask.png`)
and plain folders of images (a folder of good images for training; good/defective folders and a
mask folder for evaluation).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from padim.data.images import list_images
from padim.data.sources import folder_images
from padim.errors import PadimError

# ----------------------------------------------------------------------------- reading


def read_mask(path: str | Path) -> np.ndarray:
    """A ground-truth mask as a boolean HxW array (any non-zero pixel is anomalous)."""
    path = Path(path)
    if not path.is_file():
        raise PadimError(f"mask not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise PadimError(f"cannot read mask {path}: {exc}") from None
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    return arr > 0


# ----------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class Sample:
    """One labelled test image: label 0 good, 1 anomalous; mask path when one exists."""

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


def is_mvtec_category(root: Path) -> bool:
    return (root / "train" / "good").is_dir() or (root / "test").is_dir()


def training_images(data: str | Path) -> list[Path]:
    """Good training images: `train/good` of an MVTec category, or the images under a folder
    (sub-folders included)."""
    root = Path(data)
    if not root.exists():
        raise PadimError(f"training data not found: {root}")
    folder = root / "train" / "good" if (root / "train" / "good").is_dir() else root
    return folder_images(folder)


def mvtec_test_set(root: str | Path) -> list[Sample]:
    """MVTec AD test split: test/good (label 0) and test/<defect> with ground_truth masks."""
    root = Path(root)
    test = root / "test"
    if not test.is_dir():
        raise PadimError(f"no test/ folder in {root}: not an MVTec AD category")
    samples: list[Sample] = []
    for type_dir in sorted(p for p in test.iterdir() if p.is_dir()):
        defect = type_dir.name
        for path in list_images(type_dir):
            if defect == "good":
                samples.append(Sample(path, 0, defect))
                continue
            mask = root / "ground_truth" / defect / f"{path.stem}_mask.png"
            if not mask.is_file():
                raise PadimError(f"missing ground-truth mask for {path}: expected {mask}")
            samples.append(Sample(path, 1, defect, mask))
    if not samples:
        raise PadimError(f"no test images found under {test}")
    return samples


def folder_test_set(
    good: str | Path | None, defective: Iterable[str | Path], masks: str | Path | None
) -> list[Sample]:
    """Test set from plain folders; masks (when given) are matched by file stem,
    `<stem>.png` or `<stem>_mask.png` in any image format."""
    samples = [Sample(p, 0, "good") for p in (list_images(good) if good else [])]
    mask_index: dict[str, Path] = {}
    if masks is not None:
        for m in list_images(masks):
            mask_index[m.stem.removesuffix("_mask")] = m
    for folder in defective:
        folder = Path(folder)
        for path in list_images(folder):
            mask = None
            if masks is not None:
                mask = mask_index.get(path.stem)
                if mask is None:
                    raise PadimError(f"missing mask for {path} in {masks}")
            samples.append(Sample(path, 1, folder.name, mask))
    if not samples:
        raise PadimError("no test images found")
    return samples
