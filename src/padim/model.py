"""`Padim`: the estimator users call (fit / predict / save / load), scikit-learn style.

It orchestrates data, the torch model (`PadimNet`) and the threshold; the maths lives in
`features`, `gaussian` and `anomaly_map`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from padim import DEFAULT_BACKBONE, __version__
from padim.backbones import Normalisation, get_backbone
from padim.data import ImageInput, Preprocess, as_image, batches, list_images, training_images
from padim.errors import PadimError
from padim.features import Embedder, select_channels
from padim.gaussian import (
    DEFAULT_REGULARISATION,
    SHRINKAGE,
    GaussianModel,
    GaussianStats,
    HeldOut,
)
from padim.modelfile import load_model_file, save_model_file
from padim.network import PadimNet
from padim.scoring import DEFAULT_SCORE_MODE, SCORE_MODES, term_statistics

Loader = Callable[[int, ImageInput], torch.Tensor]

STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
MIN_TRAIN_IMAGES = 1
MIN_IMAGES_FOR_HOLDOUT = 5


@dataclass
class PadimConfig:
    """Everything that defines a fitted model's behaviour; stored in the model file."""

    backbone: str = DEFAULT_BACKBONE
    size: int = 256
    crop: int | None = 224
    channels: int | None = None  # kept channels; None: the backbone's default
    seed: int = 0
    regularisation: float = DEFAULT_REGULARISATION
    sigma: float = 4.0
    holdout_fraction: float = 0.2  # good training images held out to calibrate the threshold
    threshold_quantile: float = 0.99  # of the held-out good images' scores
    storage: str = "float16"  # dtype of the whitening matrices in the model file
    score_mode: str = DEFAULT_SCORE_MODE  # patch score: see padim.scoring
    shrinkage: str = "none"  # "ledoit-wolf": shrink each covariance before regularising

    def validate(self) -> None:
        spec = get_backbone(self.backbone)
        Preprocess(self.size, self.crop)  # validates the geometry
        if self.channels is not None and not 1 <= self.channels <= spec.total_channels:
            raise PadimError(
                f"--channels must be between 1 and {spec.total_channels} for {self.backbone}, "
                f"got {self.channels}"
            )
        if not 0 <= self.holdout_fraction < 1:
            raise PadimError("holdout fraction must be in [0, 1)")
        if not 0 < self.threshold_quantile <= 1:
            raise PadimError("threshold quantile must be in (0, 1]")
        if self.regularisation < 0 or self.sigma < 0:
            raise PadimError("regularisation and sigma must be non-negative")
        if self.score_mode not in SCORE_MODES:
            raise PadimError(f"score mode must be one of {', '.join(SCORE_MODES)}, "
                             f"got {self.score_mode!r}")
        if self.shrinkage not in SHRINKAGE:
            raise PadimError(f"shrinkage must be one of {', '.join(SHRINKAGE)}, "
                             f"got {self.shrinkage!r}")
        if self.storage not in STORAGE_DTYPES:
            raise PadimError(f"storage must be one of {', '.join(STORAGE_DTYPES)}, "
                             f"got {self.storage!r}")


@dataclass
class FitPlan:
    """Which training items are fitted and which are held out to calibrate the threshold
    ((index, item) pairs in input order)."""

    n: int
    fit_items: list[tuple[int, ImageInput]]
    hold_items: list[tuple[int, ImageInput]]
    started: float  # perf_counter() when fitting began


@dataclass
class Prediction:
    """One image's result. `anomaly_map` and `mask` are at the model's input geometry."""

    score: float
    is_anomalous: bool
    threshold: float
    anomaly_map: np.ndarray  # (H, W) float32
    mask: np.ndarray  # (H, W) bool: anomaly_map > threshold
    path: str | None = None

    @property
    def label(self) -> int:
        return int(self.is_anomalous)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise PadimError("--device cuda requested but no CUDA GPU is available")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise PadimError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def expand_inputs(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """A folder, one image, or an iterable of paths / PIL images / arrays -> a list of images."""
    if isinstance(images, str | Path):
        path = Path(images)
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise PadimError(f"no images found in {path}")
            return list(found)
        return [path]
    if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object:
        return [images]
    if not isinstance(images, Iterable):
        return [images]
    out: list[ImageInput] = []
    for item in images:
        if isinstance(item, str | Path) and Path(item).is_dir():
            out.extend(list_images(item))
        else:
            out.append(item)
    return out


class Padim:
    """PaDiM anomaly detector.

    >>> model = Padim(backbone="efficientnet_lite0", size=256, crop=None).fit("good_images/")
    >>> [p.score for p in model.predict(["a.png", "b.png"])]
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        size: int = 256,
        crop: int | None = 224,
        channels: int | None = None,
        seed: int = 0,
        weights: str | Path | None = None,
        batch_size: int = 16,
        device: str = "auto",
        regularisation: float = DEFAULT_REGULARISATION,
        sigma: float = 4.0,
        holdout_fraction: float = 0.2,
        threshold_quantile: float = 0.99,
        storage: str = "float16",
        score_mode: str = DEFAULT_SCORE_MODE,
        shrinkage: str = "none",
        progress: bool = False,
    ) -> None:
        self.config = PadimConfig(
            backbone=backbone, size=size, crop=crop, channels=channels, seed=seed,
            regularisation=regularisation, sigma=sigma, holdout_fraction=holdout_fraction,
            threshold_quantile=threshold_quantile, storage=storage, score_mode=score_mode,
            shrinkage=shrinkage,
        )
        self.config.validate()
        if batch_size < 1:
            raise PadimError(f"--batch-size must be at least 1, got {batch_size}")
        self.weights = weights
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.progress = progress
        self.net: PadimNet | None = None
        self.threshold: float | None = None
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ properties

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.config.size, self.config.crop)

    @property
    def is_fitted(self) -> bool:
        return self.net is not None

    def _require_fitted(self) -> PadimNet:
        if self.net is None:
            raise PadimError("the model is not fitted yet: call fit() or padim.load()")
        return self.net

    # ------------------------------------------------------------------ fitting

    def build_embedder(self) -> Embedder:
        """The frozen backbone + channel selection this model's config describes."""
        spec = get_backbone(self.config.backbone)
        extractor = spec.build(self.weights, seed=self.config.seed)
        keep = self.config.channels or spec.default_keep
        idx = select_channels(spec.total_channels, keep, self.config.seed)
        return Embedder(extractor, spec.normalisation, spec.channels, idx,
                        spec.cpu_batch).to(self.device)

    def fit(self, images: ImageInput | Iterable[ImageInput],
            loader: Loader | None = None) -> Padim:
        """Fit the per-position Gaussians on good images, streaming them in batches, and
        calibrate the threshold on a held-out part of them.

        `loader(index, item)` replaces the usual read + resize + crop of item number `index`
        and must return a (3, H, W) tensor at the model's input geometry (used for seeded
        augmentations such as the Rd-MVTec protocol)."""
        plan = self.plan_fit(images)
        embedder = self.build_embedder()
        bar = self._bar(plan.n, "fit")
        with torch.inference_mode():
            stats = GaussianStats.from_batches(
                self._embeddings(embedder, plan.fit_items, loader, bar))
            # held out: scored by a model that never saw them, then added
            held = list(self._embeddings(embedder, plan.hold_items, loader, bar))
        bar.close()
        holdout = torch.cat(held) if held else None
        del held
        return self.finish_fit(plan, embedder, stats, holdout, loader)

    def _embeddings(self, embedder: Embedder, items: Sequence[tuple[int, ImageInput]],
                    loader: Loader | None, bar: tqdm) -> Iterator[torch.Tensor]:
        """Embedding batches of `items`, counted on `bar`."""
        for x in self._tensor_batches(items, loader):
            yield embedder(x)
            bar.update(len(x))

    def plan_fit(self, images: ImageInput | Iterable[ImageInput]) -> FitPlan:
        """The training items and their seeded split into fitted and held-out images (the same
        for every engine, so a distributed fit sees exactly the local fit's images)."""
        if isinstance(images, str | Path) and Path(images).is_dir():
            items: list[ImageInput] = list(training_images(images))
        else:
            items = expand_inputs(images)
        n = len(items)
        if n < MIN_TRAIN_IMAGES:
            raise PadimError(
                f"need at least {MIN_TRAIN_IMAGES} good training images to fit a covariance, "
                f"got {n}"
            )
        order = np.random.default_rng(self.config.seed).permutation(n)
        n_hold = 0
        if n >= MIN_IMAGES_FOR_HOLDOUT:
            n_hold = min(n - MIN_TRAIN_IMAGES, round(self.config.holdout_fraction * n))
        indexed = list(enumerate(items))
        return FitPlan(
            n=n,
            fit_items=[indexed[i] for i in sorted(order[: n - n_hold])],
            hold_items=[indexed[i] for i in sorted(order[n - n_hold :])],
            started=time.perf_counter(),
        )

    def finish_fit(self, plan: FitPlan, embedder: Embedder, stats: GaussianStats,
                   holdout: torch.Tensor | None, loader: Loader | None = None) -> Padim:
        """Factorise the summed statistics, score the held-out embeddings and calibrate a
        threshold per score mode (consumes `stats`)."""
        with torch.inference_mode():
            factor_bar = self._bar(stats.positions, "factorise", unit="pos")
            gaussian, held_out = GaussianModel.fit(
                stats, self.config.regularisation, holdout, consume=True,
                on_chunk=factor_bar.update, shrinkage=self.config.shrinkage,
            )
            factor_bar.close()
            del stats, holdout
            self.net = PadimNet(embedder, gaussian, self.config.sigma,
                                self.config.score_mode).eval()
            source = "held-out good training images"
            if held_out is None:  # too few images to hold any out: in-sample terms (optimistic)
                held_out = self._in_sample_terms(plan.fit_items, loader)
                source = "in-sample good training images (too few to hold out)"
            self.net.term_stats = term_statistics(held_out.mahalanobis, held_out.chebyshev)
            thresholds, summary = self._calibrate(held_out)
        mode = self.config.score_mode
        self.threshold = thresholds[mode]
        n, n_cal = plan.n, held_out.mahalanobis.shape[0]
        self.info = {
            "n_train": n,
            "n_holdout": len(plan.hold_items),
            "fit_seconds": round(time.perf_counter() - plan.started, 3),
            "weights": self._weights_description(),
            "threshold_source": f"quantile {self.config.threshold_quantile} of {n_cal} {source}",
            "thresholds": thresholds,
            "good_score_summary": summary[mode],
        }
        if n < MIN_IMAGES_FOR_HOLDOUT:
            self.info["warning"] = (f"fitted on {n} image(s): the threshold comes from the "
                                    "training images themselves; calibrate it on labelled data")
        if gaussian.shrinkage_rho is not None:
            self.info["shrinkage_intensity"] = _summary(gaussian.shrinkage_rho.numpy())
        return self

    def _in_sample_terms(self, items: Sequence[tuple[int, ImageInput]],
                         loader: Loader | None) -> HeldOut:
        assert self.net is not None
        maha, cheb = [], []
        for x in self._tensor_batches(items, loader):
            m, c = self.net.terms(self.net.embedder(x), "hybrid")
            maha.append(m)
            cheb.append(c)
        return HeldOut(torch.cat(maha), torch.cat(cheb))

    def _calibrate(self, held: HeldOut) -> tuple[dict[str, float], dict[str, dict]]:
        """Threshold per score mode: a quantile of the good calibration images' scores."""
        assert self.net is not None
        size = (self.preprocess.output_size,) * 2
        thresholds, summaries = {}, {}
        for mode in SCORE_MODES:
            scores, _ = self.net.maps_from_terms(held.mahalanobis, held.chebyshev, size, mode)
            values = scores.double().cpu().numpy()
            thresholds[mode] = float(np.quantile(values, self.config.threshold_quantile))
            summaries[mode] = _summary(values)
        return thresholds, summaries

    def set_score_mode(self, mode: str) -> None:
        """Score with another mode; the threshold becomes the one calibrated for it."""
        net = self._require_fitted()
        net.set_score_mode(mode)
        thresholds = self.info.get("thresholds") or {}
        if mode not in thresholds:
            raise PadimError(f"this model has no calibrated threshold for score mode {mode}: "
                             "re-fit it with this padim")
        self.config.score_mode = mode
        self.threshold = float(thresholds[mode])

    def _weights_description(self) -> str:
        if self.weights is None:
            return f"imagenet ({get_backbone(self.config.backbone).weights_source})"
        return "random" if str(self.weights) == "random" else f"file {Path(self.weights).name}"

    def _bar(self, total: int, desc: str, unit: str = "img") -> tqdm:
        """Progress bar on stderr when asked for and stderr is a terminal."""
        return tqdm(total=total, desc=desc, unit=unit, leave=False,
                    disable=None if self.progress else True)

    def _stack(self, chunk: Sequence[ImageInput]) -> torch.Tensor:
        pre = self.preprocess
        return torch.stack([pre.image(as_image(item)) for item in chunk])

    def _tensor_batches(self, items: Sequence[tuple[int, ImageInput]],
                        loader: Loader | None = None) -> Iterator[torch.Tensor]:
        """Batches of (index, item) pairs as image tensors, through `loader` if given."""
        for chunk in batches(items, self.batch_size):
            if loader is None:
                x = self._stack([item for _, item in chunk])
            else:
                x = torch.stack([loader(i, item) for i, item in chunk])
            yield x.to(self.device)

    # ------------------------------------------------------------------ inference

    def iter_batches(
        self, items: Sequence[ImageInput]
    ) -> Iterator[tuple[Sequence[ImageInput], torch.Tensor, np.ndarray, np.ndarray]]:
        """Per batch: the items, their preprocessed images (B, 3, H, W) on the CPU, scores (B,)
        and anomaly maps (B, H, W) -- for callers that also want the pictures."""
        net = self._require_fitted()
        bar = self._bar(len(items), "predict")
        with torch.inference_mode():
            for chunk in batches(items, self.batch_size):
                x = self._stack(chunk)
                s, m = net(x.to(self.device))
                bar.update(len(chunk))
                yield chunk, x, s.float().cpu().numpy(), m[:, 0].float().cpu().numpy()
        bar.close()

    def score_tensors(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) and maps (B, H, W) for images already at the model's input geometry
        ((B, 3, H, W) floats in [0, 1]): for callers that transform images themselves."""
        net = self._require_fitted()
        with torch.inference_mode():
            s, m = net(x.to(self.device))
        return s.float().cpu().numpy(), m[:, 0].float().cpu().numpy()

    def score(self, images: ImageInput | Iterable[ImageInput]) -> tuple[np.ndarray, np.ndarray]:
        """Image scores (N,) and anomaly maps (N, H, W) as float32 arrays."""
        items = expand_inputs(images)
        if not items:
            raise PadimError("no images to score")
        parts = [(s, m) for _, _, s, m in self.iter_batches(items)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def predict(
        self, images: ImageInput | Iterable[ImageInput], threshold: float | None = None
    ) -> list[Prediction]:
        """Score, verdict, anomaly map and mask per image (threshold: the model's unless given)."""
        self._require_fitted()
        items = expand_inputs(images)
        thr = self._threshold(threshold)
        scores, maps = self.score(items)
        return [
            Prediction(
                score=float(s), is_anomalous=bool(s > thr), threshold=thr, anomaly_map=m,
                mask=m > thr, path=str(item) if isinstance(item, str | Path) else None,
            )
            for item, s, m in zip(items, scores, maps, strict=True)
        ]

    def _threshold(self, override: float | None) -> float:
        if override is not None:
            return float(override)
        if self.threshold is None:
            raise PadimError("the model has no threshold: fit it or set one")
        return self.threshold

    def set_threshold(self, value: float, source: str = "set by user") -> None:
        if not np.isfinite(value):
            raise PadimError(f"threshold must be a finite number, got {value}")
        self.threshold = float(value)
        self.info["threshold_source"] = source
        self.info.setdefault("thresholds", {})[self.config.score_mode] = self.threshold

    def calibrate(self, scores: np.ndarray, labels: np.ndarray) -> float:
        """Re-calibrate the threshold from labelled validation scores (F1-optimal)."""
        from padim.metrics import f1_optimal_threshold

        thr = f1_optimal_threshold(labels, scores)
        self.set_threshold(thr, f"F1-optimal on {len(labels)} labelled validation images")
        return thr

    # ------------------------------------------------------------------ persistence

    def to_config(self) -> dict[str, Any]:
        """The JSON side of the model file."""
        net = self._require_fitted()
        spec = get_backbone(self.config.backbone)
        grid = math.isqrt(net.gauss_mean.shape[0])  # inputs are square
        return {
            "library_version": __version__,
            "config": dataclasses.asdict(self.config),
            "backbone": {
                "name": spec.name,
                "layer_channels": list(spec.channels),
                "taps": list(net.embedder.extractor.taps),
                "normalisation": dataclasses.asdict(spec.normalisation),
            },
            "embedding_dim": net.embedder.dim,
            "grid": [grid, grid],
            "input_size": self.preprocess.output_size,
            "threshold": self.threshold,
            "info": self.info,
        }

    def save(self, path: str | Path) -> Path:
        """Write the model (tensors + JSON config) to one safetensors file, atomically."""
        net = self._require_fitted()
        tensors = {f"backbone.{k}": v for k, v in net.embedder.extractor.state_dict().items()}
        tensors["embedding.channel_idx"] = net.embedder.channel_idx
        tensors["gaussian.mean"] = net.gauss_mean
        # Lower triangles only, in the configured precision (float16 halves the file).
        tril = net.gaussian.tril()
        tensors["gaussian.whitening_tril"] = tril.to(STORAGE_DTYPES[self.config.storage])
        if net.gauss_std is not None:
            tensors["gaussian.std"] = net.gauss_std
        tensors["scoring.term_stats"] = net.term_stats
        save_model_file(path, tensors, self.to_config())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", batch_size: int = 16,
             score_mode: str | None = None) -> Padim:
        """Rebuild a fitted model from its file (no network: backbone weights are inside);
        `score_mode` replaces the mode it was fitted with (and its threshold)."""
        tensors, header = load_model_file(path)
        try:
            model = cls._from_header(header, device, batch_size)
            model._load_tensors(tensors, header)
        except PadimError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise PadimError(f"model file is incompatible or damaged: {path} ({exc})") from None
        if score_mode is not None and score_mode != model.config.score_mode:
            model.set_score_mode(score_mode)
        return model

    @classmethod
    def _from_header(cls, header: dict[str, Any], device: str, batch_size: int) -> Padim:
        cfg = PadimConfig(**header["config"])
        model = cls(
            backbone=cfg.backbone, size=cfg.size, crop=cfg.crop, channels=cfg.channels,
            seed=cfg.seed, weights="random", batch_size=batch_size, device=device,
            regularisation=cfg.regularisation, sigma=cfg.sigma,
            holdout_fraction=cfg.holdout_fraction, threshold_quantile=cfg.threshold_quantile,
            storage=cfg.storage, score_mode=cfg.score_mode, shrinkage=cfg.shrinkage,
        )
        model.threshold = None if header["threshold"] is None else float(header["threshold"])
        model.info = dict(header.get("info", {}))
        if "thresholds" not in model.info and model.threshold is not None:  # older files
            model.info["thresholds"] = {cfg.score_mode: model.threshold}
        return model

    def _load_tensors(self, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
        spec = get_backbone(self.config.backbone)
        extractor = spec.build("random", seed=self.config.seed)
        backbone_state = {
            k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")
        }
        extractor.load_state_dict(backbone_state, strict=True)
        stored = header["backbone"]["normalisation"]
        norm = Normalisation(tuple(stored["mean"]), tuple(stored["std"]))
        idx = tensors["embedding.channel_idx"]
        embedder = Embedder(extractor, norm, spec.channels, idx, spec.cpu_batch)
        mean = tensors["gaussian.mean"]
        dim = int(header["embedding_dim"])
        if idx.numel() != dim or mean.shape[1] != dim:
            raise PadimError("model file tensors do not match its config (embedding size)")
        if "gaussian.whitening_tril" in tensors:
            tril = tensors["gaussian.whitening_tril"]
            if tril.shape != (mean.shape[0], dim * (dim + 1) // 2):
                raise PadimError("model file tensors do not match each other (whitening)")
            gaussian = GaussianModel.from_tril(mean, tril)
        else:  # format 1: full float32 whitening matrices
            full = tensors["gaussian.whitening"]
            if full.shape != (mean.shape[0], dim, dim):
                raise PadimError("model file tensors do not match each other (whitening)")
            gaussian = GaussianModel.from_full(mean, full)
        gaussian.std = tensors.get("gaussian.std")
        if gaussian.std is not None and gaussian.std.shape != mean.shape:
            raise PadimError("model file tensors do not match each other (std)")
        self.net = PadimNet(embedder, gaussian, self.config.sigma, self.config.score_mode,
                            tensors.get("scoring.term_stats")).to(self.device).eval()


def load(path: str | Path, device: str = "auto", batch_size: int = 16,
         score_mode: str | None = None) -> Padim:
    """Load a model file written by `Padim.save`."""
    return Padim.load(path, device=device, batch_size=batch_size, score_mode=score_mode)


def _summary(scores: np.ndarray) -> dict[str, float]:
    q = np.quantile(scores, [0.5, 0.95, 0.99])
    return {
        "n": int(scores.size), "min": float(scores.min()), "median": float(q[0]),
        "mean": float(scores.mean()), "std": float(scores.std()), "q95": float(q[1]),
        "q99": float(q[2]), "max": float(scores.max()),
    }

