"""Images in, tensors out: robust image reading, the preprocessing geometry, and datasets.

Two layouts are understood: MVTec AD (`train/good`, `test/<type>`, `ground_truth/<type>/*_mask.png`)
and plain folders of images (a folder of good images for training; good/defective folders and a
mask folder for evaluation).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError

from padim.errors import PadimError
from padim.images import (
    IMAGE_EXTENSIONS,
    array_to_image,
    list_images,
    read_image,
    resize_crop,
    to_rgb,
)

ImageInput = str | Path | Image.Image | np.ndarray


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


def as_image(item: ImageInput) -> Image.Image:
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        return array_to_image(item)
    return read_image(item)




# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Preprocess:
    """Resize to size x size, then optionally centre-crop to crop x crop (paper: 256 / 224)."""

    size: int = 256
    crop: int | None = 224

    def __post_init__(self) -> None:
        if self.size < 16:
            raise PadimError(f"--size must be at least 16, got {self.size}")
        if self.crop is not None and not 16 <= self.crop <= self.size:
            raise PadimError(f"--crop must be between 16 and --size ({self.size}), got {self.crop}")

    @property
    def output_size(self) -> int:
        return self.crop if self.crop is not None else self.size

    def image(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image -> float tensor (3, S, S) in [0, 1] (the same pixels every runtime
        gets: `images.resize_crop`)."""
        return torch.from_numpy(resize_crop(img, self.size, self.crop))

    def mask(self, mask: np.ndarray) -> torch.Tensor:
        """Boolean HxW mask -> boolean tensor (S, S), same geometry as `image` (nearest)."""
        t = torch.from_numpy(mask.astype(np.uint8))[None]
        t = TF.resize(t, [self.size, self.size], interpolation=TF.InterpolationMode.NEAREST)
        if self.crop is not None:
            t = TF.center_crop(t, [self.crop, self.crop])
        return t[0] > 0


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
    """Good training images: `train/good` of an MVTec category, or the images in a folder."""
    root = Path(data)
    if not root.exists():
        raise PadimError(f"training data not found: {root}")
    folder = root / "train" / "good" if (root / "train" / "good").is_dir() else root
    images = list_images(folder)
    if not images:
        raise PadimError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    return images


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
