"""Scorers: what predicting and serving need from a fitted model, behind one small interface.

The REST service, `padim predict` and the Ray engine only talk to a `Scorer`: preprocess one
decoded image, score a batch, describe the model. `TorchScorer` wraps `Padim`; `OnnxScorer`
(onnxruntime) and `OpenVinoScorer` run exported files without torch. `load_scorer` picks the
runtime from the file type; the exported runtimes are `padim.deploy.exported`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from padim.data.align import Aligner, Transform
from padim.data.aligned import photo_geometry
from padim.data.decision import Decision, Geometry, decide
from padim.data.images import read_image
from padim.data.pictures import PICTURES, save_pictures
from padim.data.preprocess import Preprocess, to_json
from padim.data.regions import Region
from padim.deploy.exported import OnnxScorer, OpenVinoScorer
from padim.deploy.metadata import model_metadata
from padim.deploy.model_info import describe, file_id, image_aspect
from padim.errors import PadimError
from padim.model.thresholds import Thresholds
from padim.normalise import ScoreScale


class Scorer(Protocol):
    model_id: str
    threshold: float
    input_size: int | list[int]  # a side when square, else [width, height] (for people)
    input_hw: tuple[int, int]  # (height, width) of the model input
    geometry: Preprocess  # how images are brought to the model input (and maps back)
    thresholds: Thresholds  # the threshold, operating points and normalised score's spreads
    score_scale: ScoreScale  # raw score -> normalised, at the model's threshold
    operating_points: dict[str, float]  # named thresholds usable with this model's score mode
    image_aspect: float  # width / height of the images the model was fitted on
    aligner: Aligner | None  # registers photos onto the model's reference part, when it aligns

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (3, S, S) float32 in [0, 1] at the model's input geometry."""

    def score_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) float32 -> scores (B,) and anomaly maps (B, S, S), float32."""

    def describe(self) -> dict[str, Any]:
        """Backbone, geometry, threshold, training-set size, versions: for /v1/model."""


ALIGNMENT_COLUMNS = ("align_dx", "align_dy", "align_angle", "align_scale", "align_quality")
RESULT_COLUMNS = (
    "path",
    "score",
    "normalised_score",
    "label",
    "regions",
    "threshold",
    "error",
    "overlay",
    "heatmap",
    "mask",
    "verdict",
    "reason",
    *ALIGNMENT_COLUMNS,
)
"""One scored image's columns in results tables (`padim predict`'s CSV, bulk jobs' tables)."""


def alignment_columns(transform: Transform | None) -> dict[str, float | None]:
    """A photo's alignment as flat table columns (None for models that do not align)."""
    if transform is None:
        return dict.fromkeys(ALIGNMENT_COLUMNS)
    (dx, dy), t = transform.shift, transform
    values = (dx, dy, t.angle, t.scale, t.quality)
    return {c: round(float(v), 5) for c, v in zip(ALIGNMENT_COLUMNS, values, strict=True)}


@dataclass
class Scored:
    """One image file's outcome: its model input, score and map, or why it has none."""

    path: str
    image: np.ndarray | None = None  # (3, H, W) model input in [0, 1]
    original: Image.Image | None = None  # the decoded photo, when asked for
    score: float | None = None
    anomaly_map: np.ndarray | None = None  # (S, S)
    error: str | None = None  # "code: message", one line
    size: tuple[int, int] | None = None  # (width, height) of the photo
    transform: Transform | None = None  # the photo's alignment (models that align)
    aligned: Image.Image | None = None  # the photo brought onto the reference, when asked for


def is_finite(scores: np.ndarray | float, maps: np.ndarray) -> bool:
    """Whether scores and anomaly maps are all finite numbers: anything else comes from a damaged
    model and must never become a verdict."""
    return bool(np.isfinite(scores).all() and np.isfinite(maps).all())


def score_files(
    scorer: Scorer, paths: Sequence[str | Path], keep_originals: bool = False
) -> list[Scored]:
    """Read, preprocess and score image files as one batch. A file that cannot be read becomes
    an error (never a failed batch), and so does a non-finite score: a damaged model must never
    give a verdict. `keep_originals` keeps the decoded photos (for pictures at their size)."""
    return score_images(scorer, [(str(p), read_photo(p)) for p in paths], keep_originals)


def read_photo(path: str | Path) -> Image.Image | str:
    """An image file decoded, or why it could not be ("code: message"): one unreadable file
    is that file's problem, never the batch's."""
    try:
        return read_image(path)
    except PadimError as exc:
        return f"{getattr(exc, 'code', 'unreadable')}: {exc}"
    except Exception as exc:  # any decoder failure
        return f"unreadable: {type(exc).__name__}: {exc}"


def score_images(
    scorer: Scorer, photos: Sequence[tuple[str, Image.Image | str]], keep_originals: bool = False
) -> list[Scored]:
    """Score decoded photos (name, image) as one batch; a photo given as a string is an error
    already (why it could not be read) and is passed through."""
    out = [Scored(name) for name, _ in photos]
    readable, arrays = [], []
    for item, (_, photo) in zip(out, photos, strict=True):
        if isinstance(photo, str):
            item.error = photo
            continue
        try:
            item.size = photo.size
            item.original = photo if keep_originals else None
            if scorer.aligner is not None:  # registered outside the graph, in every runtime
                photo, item.transform = scorer.aligner.align(photo)
                item.aligned = photo if keep_originals else None
            item.image = scorer.preprocess(photo)
            readable.append(item)
            arrays.append(item.image)
        except PadimError as exc:
            item.error = f"{getattr(exc, 'code', 'unreadable')}: {exc}"
    if readable:
        scores, maps = scorer.score_batch(np.stack(arrays))
        for item, score, amap in zip(readable, scores, maps, strict=True):
            if is_finite(score, amap):
                item.score, item.anomaly_map = float(score), amap
            else:
                item.error = (
                    "non_finite: the model gave a non-finite score (is the model file damaged?)"
                )
    for item in out:
        if item.error:
            item.error = item.error.strip().splitlines()[0][:500]
    return out


def resolve_threshold(
    scorer: Scorer, threshold: float | None = None, operating_point: str | None = None
) -> float:
    """A given threshold, a named operating point's, or the model's (`Thresholds.resolve`)."""
    return scorer.thresholds.resolve(threshold, operating_point)


def item_geometry(scorer: Scorer, item: Scored) -> Geometry:
    """How a scored image's map gets onto its photo: the model geometry, then (when the model
    aligns) the inverse of the photo's alignment."""
    return photo_geometry(scorer.geometry, scorer.aligner, item.transform)


def decide_scored(
    scorer: Scorer, item: Scored, threshold: float, scale: ScoreScale, min_area: int = 0
) -> Decision:
    """`decide` for a scored image: regions on the photo through its alignment, and the
    verdict "cannot_align" for a photo that could not be aligned."""
    assert item.score is not None and item.anomaly_map is not None and item.size is not None
    geometry = item_geometry(scorer, item)
    return decide(
        item.score,
        item.anomaly_map,
        threshold,
        scale,
        geometry,
        item.size,
        min_area,
        item.transform,
    )


def save_scored_pictures(
    scorer: Scorer,
    item: Scored,
    folder: Path,
    name: str,
    threshold: float,
    kinds: Sequence[str] = PICTURES,
    regions: Sequence[Region] = (),
) -> dict[str, str]:
    """A scored image's pictures as PNG files at the photo's own resolution (the map brought
    back through the model's geometry), coloured on the normalised score at `threshold`,
    regions boxed; returns the file names by kind."""
    assert item.original is not None and item.anomaly_map is not None and item.size is not None
    geometry = item_geometry(scorer, item)
    amap = geometry.map_to_image(item.anomaly_map, item.size)
    scale = scorer.score_scale.at(threshold)
    return save_pictures(
        folder,
        name,
        np.asarray(item.original),
        amap,
        threshold,
        kinds,
        scale,
        regions,
        geometry.uninspected(item.size),
    )


def check_scorer(scorer: Scorer) -> None:
    """Score one blank image and require a finite score and map of the right shape: a model
    that cannot score is refused before it is served."""
    h, w = scorer.input_hw
    try:
        scores, maps = scorer.score_batch(np.zeros((1, 3, h, w), np.float32))
    except Exception as exc:
        raise PadimError(
            f"the model cannot score an image: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        ) from None
    if np.shape(scores) != (1,) or np.shape(maps) != (1, h, w):
        raise PadimError(
            f"the model gives scores {np.shape(scores)} and maps {np.shape(maps)} "
            f"for one {w}x{h} image: the model file is damaged"
        )
    if not is_finite(scores, maps):
        raise PadimError("the model gives non-finite scores: the model file is damaged")


class TorchScorer:
    """A fitted `Padim` (torch) as a `Scorer`."""

    def __init__(self, model: Any, model_id: str = "in-memory", path: str | None = None) -> None:
        if model.threshold_ is None:
            raise PadimError("the model has no threshold: calibrate it before serving")
        self.model = model
        self.model_id = model_id
        self.path = path
        self.threshold = float(model.threshold_)
        self.geometry = model.preprocess
        self.input_hw = model.preprocess.output_hw
        self.input_size = to_json(model.preprocess.output_wh)
        self.thresholds = model.calibration
        self.score_scale = self.thresholds.scale()
        self.operating_points = self.thresholds.usable()
        trained = model.training_.image_size if model.training_ is not None else None
        self.image_aspect = image_aspect(trained, self.geometry)
        self.aligner = getattr(model, "aligner_", None)

    @classmethod
    def from_file(
        cls, path: str | Path, device: str = "auto", score_mode: str | None = None
    ) -> TorchScorer:
        from padim.model.estimator import Padim

        model = Padim.load(path, device=device, score_mode=score_mode)
        return cls(model, file_id(path), str(path))

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.model.preprocess.image(image)

    def score_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        return self.model.score_tensors(torch.from_numpy(x))

    def describe(self) -> dict[str, Any]:
        return describe(
            model_metadata(self.model, self.model_id),
            self.model_id,
            Path(self.path).name if self.path else None,
            "torch",
            self.threshold,
        )


def load_scorer(
    path: str | Path,
    device: str = "auto",
    threads: int | None = None,
    score_mode: str | None = None,
) -> Scorer:
    """The right runtime for a model file: .onnx -> onnxruntime, .xml -> OpenVINO (neither
    imports torch), anything else -> a padim model file run by torch. `score_mode` replaces
    the model's (torch only: an export has its mode built in). Every scorer must score a blank
    image (finite score and map of the right shapes) before it is returned: a damaged or
    mismatched file is one clear error here, not a traceback mid-run."""
    suffix = Path(path).suffix.lower()
    if suffix in (".onnx", ".xml"):
        if not Path(path).is_file():
            raise PadimError(f"model file not found: {path}")
        scorer = (OnnxScorer if suffix == ".onnx" else OpenVinoScorer)(path, threads)
        built_in = scorer.meta.get("score_mode", "mahalanobis")
        if score_mode is not None and score_mode != built_in:
            raise PadimError(
                f"{path} was exported with score mode {built_in}; export the "
                f"model again with --score-mode {score_mode}"
            )
        check_scorer(scorer)
        return scorer
    if threads:
        import torch

        torch.set_num_threads(threads)
    torch_scorer = TorchScorer.from_file(path, device=device, score_mode=score_mode)
    check_scorer(torch_scorer)
    return torch_scorer
