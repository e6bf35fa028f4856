"""What serving needs from a fitted model, behind one small interface.

The REST service only talks to a `Scorer`: preprocess one decoded image, score a batch, describe
the model. `TorchScorer` wraps `Padim`; other runtimes (ONNX) plug in beside it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from padim import __version__


class Scorer(Protocol):
    model_id: str
    threshold: float
    input_size: int

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (3, S, S) float32 in [0, 1] at the model's input geometry."""

    def score_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 3, S, S) float32 -> scores (B,) and anomaly maps (B, S, S), float32."""

    def describe(self) -> dict[str, Any]:
        """Backbone, geometry, threshold, training-set size, versions: for /v1/model."""


def file_id(path: str | Path) -> str:
    """`<stem>-<first 12 hex of sha256>`: names one exact model file."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return f"{Path(path).stem}-{digest.hexdigest()[:12]}"


class TorchScorer:
    """A fitted `Padim` (torch) as a `Scorer`."""

    def __init__(self, model: Any, model_id: str = "in-memory", path: str | None = None) -> None:
        if model.threshold is None:
            from padim.errors import PadimError

            raise PadimError("the model has no threshold: calibrate it before serving")
        self.model = model
        self.model_id = model_id
        self.path = path
        self.threshold = float(model.threshold)
        self.input_size = model.preprocess.output_size

    @classmethod
    def from_file(cls, path: str | Path, device: str = "auto") -> TorchScorer:
        from padim.model import Padim

        model = Padim.load(path, device=device)
        return cls(model, file_id(path), str(path))

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.model.preprocess.image(image).numpy()

    def score_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        return self.model.score_tensors(torch.from_numpy(x))

    def describe(self) -> dict[str, Any]:
        cfg = self.model.config
        info = self.model.info
        return {
            "model_id": self.model_id,
            "file": Path(self.path).name if self.path else None,
            "runtime": "torch",
            "backbone": cfg.backbone,
            "resize": cfg.size,
            "crop": cfg.crop,
            "input_size": self.input_size,
            "embedding_dim": self.model.net.embedder.dim if self.model.net else None,
            "threshold": self.threshold,
            "threshold_source": info.get("threshold_source"),
            "n_train": info.get("n_train"),
            "n_holdout": info.get("n_holdout"),
            "weights": info.get("weights"),
            "sigma": cfg.sigma,
            "library_version": __version__,
        }


def load_scorer(path: str | Path, device: str = "auto") -> Scorer:
    """The right runtime for a model file."""
    return TorchScorer.from_file(path, device=device)
