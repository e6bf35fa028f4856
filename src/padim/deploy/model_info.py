"""What every runtime says about its model, from the model or from an export's metadata:
the file's id, the thresholds, the training images' aspect ratio and the description that
/v1/model and `padim info` show."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from padim import __version__
from padim.data.preprocess import Preprocess
from padim.model.thresholds import Thresholds


def file_id(path: str | Path) -> str:
    """`<stem>-<first 12 hex of sha256>`: names one exact model file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return f"{Path(path).stem}-{digest.hexdigest()[:12]}"


def thresholds_of(meta: dict[str, Any], threshold: float) -> Thresholds:
    """The thresholds a model (or an export) scores with, from its metadata: the operating
    points of its score mode and the normalised score's spread."""
    mode = meta.get("score_mode", "mahalanobis")
    return Thresholds.from_info(meta.get("info") or {}, threshold, mode)


def image_aspect(trained: Any, geometry: Preprocess) -> float:
    """Width / height of a model's training images (older files: its resize target)."""
    if isinstance(trained, list | tuple) and len(trained) == 2 and min(trained) > 0:
        return trained[0] / trained[1]
    w, h = geometry.size_wh
    return w / h


def describe(
    meta: dict[str, Any], model_id: str, file: str | None, runtime: str, threshold: float
) -> dict[str, Any]:
    """What /v1/model and `padim info` show, from a model's metadata (`model_metadata`)."""
    info = meta.get("info") or {}
    return {
        "model_id": model_id,
        "file": file,
        "runtime": runtime,
        "backbone": meta.get("backbone"),
        "resize": meta.get("resize"),
        "crop": meta.get("crop"),
        "input_size": meta.get("input_size"),
        "embedding_dim": meta.get("embedding_dim"),
        "threshold": threshold,
        "threshold_source": info.get("threshold_source"),
        "n_train": info.get("n_train"),
        "training_image_size": info.get("image_size"),
        "n_holdout": info.get("n_holdout"),
        "weights": info.get("weights"),
        "sigma": meta.get("sigma"),
        "score_mode": meta.get("score_mode", "mahalanobis"),
        "neighbourhood": meta.get("neighbourhood", 0),
        "alignment": meta.get("alignment"),
        "score_scale": thresholds_of(meta, threshold).scale().to_dict(),
        "operating_point": info.get("operating_point"),
        "good_score_summary": info.get("good_score_summary"),
        "operating_points": {
            name: {k: p.get(k) for k in ("threshold", "rule", "data", "false_alarms", "misses")}
            for name, p in (info.get("operating_points") or {}).items()
            if isinstance(p, dict)
        },
        "library_version": __version__,
    }
