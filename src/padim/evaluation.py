"""Run a fitted model over a labelled test set and compute its metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from padim.data import Sample, read_mask
from padim.errors import PadimError
from padim.metrics import metric_suite
from padim.model import Padim


@dataclass
class EvaluationRun:
    """Everything a report needs: the samples, their scores and maps, ground truth, metrics."""

    samples: list[Sample]
    scores: np.ndarray  # (N,)
    maps: np.ndarray  # (N, H, W)
    masks: np.ndarray | None  # (N, H, W) bool, None when no masks exist
    threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


def ground_truth_masks(model: Padim, samples: list[Sample]) -> np.ndarray | None:
    """Masks at the model's geometry: anomalous samples need one; good samples are all-zero."""
    if not any(s.mask_path for s in samples):
        return None
    pre = model.preprocess
    size = pre.output_size
    out = np.zeros((len(samples), size, size), dtype=bool)
    for i, s in enumerate(samples):
        if s.label == 1:
            if s.mask_path is None:
                raise PadimError(f"missing ground-truth mask for {s.path}")
            out[i] = pre.mask(read_mask(s.mask_path)).numpy()
    return out


def evaluate(model: Padim, samples: list[Sample]) -> EvaluationRun:
    """Score every sample and compute the metric suite (pixel metrics when masks exist)."""
    masks = ground_truth_masks(model, samples)
    scores, maps = model.score([s.path for s in samples])
    run = EvaluationRun(samples, scores, maps, masks, float(model.threshold or 0.0))
    labels = run.labels
    predicted = scores > run.threshold
    suite = metric_suite(labels, scores, run.threshold, masks, maps,
                         types=[s.defect_type for s in samples])
    run.metrics = {
        "n_images": len(samples),
        "n_anomalous": int(labels.sum()),
        "n_good": int((labels == 0).sum()),
        "threshold": run.threshold,
        "image_auroc": suite.pop("image_auroc"),
        "pixel_auroc": suite.pop("pixel_auroc"),
        "image_accuracy_at_threshold": float((predicted == labels.astype(bool)).mean()),
        **suite,
    }
    return run


def pick_examples(run: EvaluationRun, per_class: int = 3) -> list[int]:
    """Indices worth showing: the highest-scoring good images and a spread of anomalous ones."""
    labels = run.labels
    good = [int(i) for i in np.argsort(-run.scores) if labels[i] == 0][:per_class]
    bad = [int(i) for i in np.argsort(run.scores) if labels[i] == 1]
    if bad:
        bad = [bad[int(k)] for k in np.unique(np.linspace(0, len(bad) - 1, per_class).round())]
    return bad + good


def report_figure(model: Padim, run: EvaluationRun, path, per_class: int = 3) -> None:
    """A grid of test images with ground truth, heat map and predicted mask."""
    from padim.data import read_image
    from padim.viz import results_grid, to_uint8_image

    rows = []
    for i in pick_examples(run, per_class):
        s = run.samples[i]
        rows.append({
            "image": to_uint8_image(model.preprocess.image(read_image(s.path))),
            "map": run.maps[i],
            "truth": None if run.masks is None else run.masks[i],
            "score": float(run.scores[i]),
            "label": s.label,
            "name": f"{s.defect_type}/{s.path.name}",
        })
    results_grid(rows, run.threshold, path, title="padim results")
