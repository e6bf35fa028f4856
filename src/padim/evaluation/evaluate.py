"""Run a fitted model over a labelled test set and compute its metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from padim.data.aligned import AlignedItem
from padim.data.datasets import Sample, read_mask
from padim.data.images import read_image
from padim.data.pictures import to_picture
from padim.data.preprocess import Preprocess, batches, centre_crop
from padim.errors import PadimError
from padim.evaluation.metrics import metric_suite
from padim.evaluation.perturb import RandomRotateCrop, native_photo, perturbed_sample
from padim.model.estimator import Padim
from padim.normalise import ScoreScale


@dataclass
class EvaluationRun:
    """Everything a report needs: the samples, their scores and maps, ground truth, metrics."""

    samples: list[Sample]
    scores: np.ndarray  # (N,)
    maps: np.ndarray  # (N, H, W)
    masks: np.ndarray | None  # (N, H, W) bool, None when no masks exist
    threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)
    score_seconds: float = 0.0  # wall time of scoring alone (reading + model), not metrics
    perturbation: RandomRotateCrop | None = None
    preprocess: Preprocess | None = None
    scale: ScoreScale | None = None  # the model's normalised score: the pictures' colours
    cannot_align: int | None = None  # test images the model could not align (when it aligns)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def image(self, i: int) -> np.ndarray:
        """Test image i as the model saw it (perturbed if the run was), (H, W, 3) uint8."""
        s, pre = self.samples[i], self.preprocess
        assert pre is not None, "an EvaluationRun made by evaluate() has its preprocessing"
        if self.perturbation is None:
            return to_picture(pre.image(read_image(s.path)))
        img, _ = perturbed_sample(self.perturbation, pre, i, s.path, None)
        return to_picture(img.numpy())


def ground_truth_masks(model: Padim, samples: list[Sample]) -> np.ndarray | None:
    """Masks at the model's geometry: anomalous samples need one; good samples are all-zero."""
    if not any(s.mask_path for s in samples):
        return None
    pre = model.preprocess
    out = np.zeros((len(samples), *pre.output_hw), dtype=bool)
    for i, s in enumerate(samples):
        if s.label == 1:
            if s.mask_path is None:
                raise PadimError(f"missing ground-truth mask for {s.path}")
            out[i] = pre.mask(read_mask(s.mask_path))
    return out


def _score_perturbed(
    model: Padim, samples: list[Sample], perturbation: RandomRotateCrop
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Scores, maps and masks of perturbed test images (image and mask transformed alike)."""
    has_masks = any(s.mask_path for s in samples)
    scores, maps, masks = [], [], []
    bar = model.progress_bar(len(samples), perturbation.name)
    for chunk in batches(list(enumerate(samples)), model.batch_size):
        images = []
        for i, s in chunk:
            if has_masks and s.label == 1 and s.mask_path is None:
                raise PadimError(f"missing ground-truth mask for {s.path}")
            img, mask = perturbed_sample(perturbation, model.preprocess, i, s.path, s.mask_path)
            images.append(img)
            if has_masks:
                masks.append(mask.numpy() if mask is not None else np.zeros(img.shape[1:], bool))
        s_batch, m_batch = model.score_tensors(torch.stack(images))
        scores.append(s_batch)
        maps.append(m_batch)
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(scores), np.concatenate(maps), np.stack(masks) if has_masks else None


def aligned_maps(
    model: Padim, photos: list[Any], on_model_grid: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores, maps and the number of photos that could not be aligned, for a model that
    aligns: each map is brought back onto its photo (through the inverse of its alignment),
    then (`on_model_grid`) through the model's resize and crop, where the masks are."""
    pre = model.preprocess
    scores, maps, unaligned = [], [], 0
    for chunk, _, s_batch, m_batch in model.iter_batches(photos):
        for item, amap in zip(chunk, m_batch, strict=True):
            assert isinstance(item, AlignedItem) and item.photo_size is not None
            unaligned += int(item.transform is None or not item.transform.ok)
            on_photo = model.geometry_of(item).map_to_image(amap, item.photo_size)
            maps.append(map_on_model_grid(on_photo, pre) if on_model_grid else on_photo)
        scores.append(s_batch)
    return np.concatenate(scores), np.stack(maps), unaligned


def map_on_model_grid(amap: np.ndarray, pre: Preprocess) -> np.ndarray:
    """A map at a photo's size resized and cropped like the photo itself (bilinear)."""
    resized = Image.fromarray(np.ascontiguousarray(amap, np.float32)).resize(
        pre.size_wh, Image.Resampling.BILINEAR
    )
    return np.ascontiguousarray(centre_crop(np.asarray(resized, np.float32), pre.crop_wh))


def perturbed_photos(
    model: Padim, samples: list[Sample], perturbation: RandomRotateCrop
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Perturbed test images as photos at their own resolution, and their masks at the model
    input's size (where the maps are judged), for models that align (the photo is what they
    register)."""
    has_masks = any(s.mask_path for s in samples)
    photos, masks = [], []
    for i, s in enumerate(samples):
        if has_masks and s.label == 1 and s.mask_path is None:
            raise PadimError(f"missing ground-truth mask for {s.path}")
        photo, mask = native_photo(perturbation, i, s.path, s.mask_path)
        photos.append(photo)
        if has_masks:
            shape = photo.shape[:2]
            masks.append(judged(mask if mask is not None else np.zeros(shape, bool), model))
    return photos, np.stack(masks) if has_masks else None


def judged(array: np.ndarray, model: Padim) -> np.ndarray:
    """A photo-sized map (float, bilinear) or mask (bool, nearest) at the model input's size,
    where a perturbed run's metrics are computed (as for models that do not align)."""
    grid = Preprocess(model.preprocess.output_wh, None)
    return grid.mask(array) if array.dtype == bool else map_on_model_grid(array, grid)


def evaluate(
    model: Padim,
    samples: list[Sample],
    perturbation: RandomRotateCrop | None = None,
    min_area: int = 0,
) -> EvaluationRun:
    """Score every sample (optionally perturbed) and compute the metric suite (pixel metrics
    when masks exist; false regions of at least `min_area` pixels of the maps)."""
    return add_metrics(score_run(model, samples, perturbation), min_area)


def score_run(
    model: Padim, samples: list[Sample], perturbation: RandomRotateCrop | None = None
) -> EvaluationRun:
    """The scores, maps and ground truth of a test set, metrics not yet computed: what needs
    the model (a caller may let the model go before `add_metrics`, whose pooled-pixel sort is
    the memory peak of an evaluation)."""
    masks = None if perturbation else ground_truth_masks(model, samples)
    started = time.perf_counter()
    unaligned = None
    if getattr(model, "aligner_", None) is not None:  # maps judged on the photos themselves
        photos: list[Any] = [s.path for s in samples]
        if perturbation is not None:
            photos, masks = perturbed_photos(model, samples, perturbation)
        scores, maps, unaligned = aligned_maps(model, photos, perturbation is None)
        if perturbation is not None:
            maps = np.stack([judged(m, model) for m in maps])
    elif perturbation is None:
        scores, maps = model.score([s.path for s in samples])
    else:
        scores, maps, masks = _score_perturbed(model, samples, perturbation)
    run = EvaluationRun(
        samples,
        scores,
        maps,
        masks,
        float(model.threshold_ or 0.0),
        score_seconds=time.perf_counter() - started,
        perturbation=perturbation,
        preprocess=model.preprocess,
        scale=model.score_scale if model.threshold_ is not None else None,
    )
    run.cannot_align = unaligned
    return run


def add_metrics(run: EvaluationRun, min_area: int = 0) -> EvaluationRun:
    """Fill `run.metrics` with the metric suite (see `metric_suite`); returns the run."""
    labels, scores = run.labels, run.scores
    predicted = scores > run.threshold
    suite = metric_suite(
        labels,
        scores,
        run.threshold,
        run.masks,
        run.maps,
        types=[s.defect_type for s in run.samples],
        min_area=min_area,
    )
    run.metrics = {
        "n_images": len(run.samples),
        "n_anomalous": int(labels.sum()),
        "n_good": int((labels == 0).sum()),
        "threshold": run.threshold,
        "perturbation": None if run.perturbation is None else run.perturbation.name,
        "image_auroc": suite.pop("image_auroc"),
        "pixel_auroc": suite.pop("pixel_auroc"),
        "image_accuracy_at_threshold": float((predicted == labels.astype(bool)).mean()),
        **suite,
    }
    if run.cannot_align is not None:
        run.metrics["cannot_align"] = run.cannot_align
    return run


def pick_examples(run: EvaluationRun, per_class: int = 3) -> list[int]:
    """Indices worth showing: the highest-scoring good images and a spread of anomalous ones."""
    labels = run.labels
    good = [int(i) for i in np.argsort(-run.scores) if labels[i] == 0][:per_class]
    bad = [int(i) for i in np.argsort(run.scores) if labels[i] == 1]
    if bad:
        bad = [bad[int(k)] for k in np.unique(np.linspace(0, len(bad) - 1, per_class).round())]
    return bad + good


def example_rows(run: EvaluationRun, per_class: int = 3) -> list[dict]:
    """The rows `viz.results_grid` draws: image, map, ground truth, score, label, name."""
    rows = []
    for i in pick_examples(run, per_class):
        s = run.samples[i]
        rows.append(
            {
                "image": run.image(i),
                "map": run.maps[i],
                "truth": None if run.masks is None else run.masks[i],
                "score": float(run.scores[i]),
                "label": s.label,
                "name": f"{s.defect_type}/{s.path.name}",
            }
        )
    return rows
