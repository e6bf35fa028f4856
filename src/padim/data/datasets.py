"""Labelled data sets and training folders.

Three layouts are understood: MVTec AD (`train/good`, `test/<type>`,
`ground_truth/<type>/*_mask.png`), ShanghaiTech Campus video (STC: `training/videos`,
`testing/frames`, frame labels and pixel masks as .npy), and plain folders of images (a folder of
good images, or of videos, for training; good/defective folders and a mask folder for
evaluation).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from padim.data.images import list_images
from padim.data.sources import find_images, folder_images
from padim.data.video import FrameRef, is_video, video_frames
from padim.errors import PadimError

# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ArrayMask:
    """Frame `index` of a (frames, H, W) NumPy mask file (STC's test_pixel_mask/<video>.npy)."""

    file: Path
    index: int

    def __str__(self) -> str:
        return f"{self.file}[{self.index}]"


def read_mask(path: str | Path | ArrayMask) -> np.ndarray:
    """A ground-truth mask as a boolean HxW array (any non-zero pixel is anomalous)."""
    if isinstance(path, ArrayMask):
        try:
            return np.asarray(np.load(path.file, mmap_mode="r")[path.index]) > 0
        except (OSError, ValueError, IndexError) as exc:
            raise PadimError(f"cannot read mask {path}: {exc}") from None
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
    mask_path: Path | ArrayMask | None = None


def is_mvtec_category(root: Path) -> bool:
    return (root / "train" / "good").is_dir() or (root / "test").is_dir()


def is_stc(root: Path) -> bool:
    """The ShanghaiTech Campus (STC) layout: training/ and testing/test_frame_mask/."""
    return (root / "training").is_dir() and (root / "testing" / "test_frame_mask").is_dir()


def scene_of(video: str) -> str:
    """An STC video's camera scene: the part of its name before "_" ("01_0014" -> "01")."""
    return video.split("_")[0]


def _in_scene(name: str, scene: str | None) -> bool:
    return scene is None or scene_of(name) == scene


def stc_scenes(root: str | Path) -> list[str]:
    """The scenes of an STC root that have labelled test videos, sorted."""
    labels = Path(root) / "testing" / "test_frame_mask"
    return sorted({scene_of(p.stem) for p in labels.glob("*.npy")})


def stc_training_frames(
    root: str | Path, every: int = 1, scene: str | None = None
) -> list[FrameRef] | list[Path]:
    """STC's normal training frames, every `every`-th: from training/videos/*.avi (decoded when
    read) or, where they were extracted, training/frames/<video>/*.jpg; `scene` ("01".."13")
    keeps one camera's videos."""
    root = Path(root)
    frames_dir, videos_dir = root / "training" / "frames", root / "training" / "videos"
    if frames_dir.is_dir():
        folders = [
            d for d in sorted(frames_dir.iterdir()) if d.is_dir() and _in_scene(d.name, scene)
        ]
        found: list[Path] = [p for d in folders for p in list_images(d)[::every]]
        if found:
            return found
    videos = [v for v in find_videos(videos_dir) if _in_scene(v.stem, scene)]
    if not videos:
        raise PadimError(
            f"no training videos for scene {scene} in {videos_dir}"
            if scene
            else f"no training videos or frames in {root / 'training'}"
        )
    return [ref for v in videos for ref in video_frames(v, every)]


def stc_test_set(root: str | Path, every: int = 1, scene: str | None = None) -> list[Sample]:
    """STC's test frames (testing/frames/<video>/*.jpg, every `every`-th) labelled from
    testing/test_frame_mask/<video>.npy (1 = abnormal frame), with pixel masks from
    testing/test_pixel_mask/<video>.npy where that folder exists."""
    root = Path(root)
    labels_dir = root / "testing" / "test_frame_mask"
    pixels_dir = root / "testing" / "test_pixel_mask"
    frames_dir = root / "testing" / "frames"
    samples: list[Sample] = []
    for label_file in sorted(labels_dir.glob("*.npy")):
        video = label_file.stem
        if not _in_scene(video, scene):
            continue
        frames = list_images(frames_dir / video)
        try:
            labels = np.load(label_file).astype(np.int64).ravel()
        except (OSError, ValueError) as exc:
            raise PadimError(f"cannot read frame labels {label_file}: {exc}") from None
        if len(labels) != len(frames):
            raise PadimError(
                f"{label_file} labels {len(labels)} frames but {frames_dir / video} has "
                f"{len(frames)}"
            )
        pixels = pixels_dir / f"{video}.npy"
        for i in range(0, len(frames), every):
            label = int(labels[i] > 0)
            mask = ArrayMask(pixels, i) if pixels.is_file() else None
            samples.append(Sample(frames[i], label, "abnormal" if label else "good", mask))
    if not samples:
        where = f" for scene {scene}" if scene else ""
        raise PadimError(f"no STC test frames{where} under {frames_dir}")
    return samples


def find_videos(folder: Path) -> list[Path]:
    """Video files under a folder (sub-folders included), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_video(p))


def training_inputs(
    data: str | Path, every: int = 1, scene: str | None = None
) -> Path | list[FrameRef] | list[Path]:
    """What `padim fit DATA` trains on: an MVTec category or folder of images as it is, or
    frames of videos (every `every`-th): an STC root, one video file, or a folder holding
    videos and no images."""
    root = Path(data)
    if not root.exists():  # said before the backbone is loaded
        raise PadimError(f"training data not found: {root}")
    if is_stc(root):
        return stc_training_frames(root, every, scene)
    if root.is_file() and is_video(root):
        return video_frames(root, every)
    if root.is_dir() and not find_images(root):
        videos = find_videos(root)
        if videos:
            return [ref for v in videos for ref in video_frames(v, every)]
    return root


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
