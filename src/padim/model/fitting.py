"""`Fitter`: one fit job, from good images to a `ModelState`.

The steps: resolve the input size ("auto", "native") and split the images into fitted and
held-out ones (seeded, the same for every engine); sum the fitted images' embeddings (in memory,
or from disk when that is smaller); factorise the Gaussians, scoring the held-out images with
Gaussians that never saw them; calibrate every score mode's threshold on those scores. How the
sums are gathered is the one step an engine may replace (`Gather`: the Ray engine shards it over
a cluster); everything else is this object's, behind `fit` and `update`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from padim.core.backbones import get_backbone
from padim.core.factorise import fit_gaussians
from padim.core.features import Embedder, select_channels, semi_orthogonal
from padim.core.gaussian import HeldOut
from padim.core.holdout import HoldoutStore
from padim.core.neighbourhood import offsets, shift_embeddings
from padim.core.net import PadimNet
from padim.core.scoring import SCORE_MODES, term_statistics
from padim.core.statistics import GaussianStats
from padim.core.tiling import TiledEmbedder
from padim.data.align import Aligner, Transform
from padim.data.aligned import AlignedItem
from padim.data.datasets import read_mask, training_images
from padim.data.images import ImageInput, image_digest
from padim.data.preprocess import AUTO_SAMPLE, auto_size, batches, image_shape, native_size
from padim.data.sources import expand_inputs
from padim.errors import PadimError
from padim.model.calibration import now_iso, score_summary
from padim.model.config import MIN_IMAGES_FOR_HOLDOUT, MIN_TRAIN_IMAGES, PadimConfig
from padim.model.config import TrainingSummary as Summary
from padim.model.sizing import Sizing
from padim.model.state import ModelState
from padim.model.thresholds import HELD_OUT, Thresholds
from padim.progress import ProgressSink, progress_bar

Loader = Callable[[int, ImageInput], torch.Tensor]
"""`loader(index, item)` -> (3, S, S) tensor at the model's input geometry: replaces the usual
read + resize + crop of training item number `index` (seeded augmentations)."""
Embedding = Embedder | TiledEmbedder
Gather = Callable[["Fitter", "FitPlan", Embedding, ExitStack], tuple[GaussianStats, HoldoutStore]]
"""`gather(fitter, plan, embedder, stores)` -> the fitted images' sums and the held-out images'
embeddings (disk stores entered into `stores`, closed when the fit ends): how an engine
computes them (`Fitter.gather` is the local one)."""


@dataclass
class FitPlan:
    """Which training items are fitted and which are held out to calibrate the threshold
    ((index, item) pairs in input order)."""

    n: int
    fit_items: list[tuple[int, ImageInput]]
    hold_items: list[tuple[int, ImageInput]]
    started: float  # perf_counter() when fitting began


def training_items(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """A folder's training images (an MVTec category's train/good), or the items given."""
    if isinstance(images, str | Path) and Path(images).is_dir():
        return list(training_images(images))
    return expand_inputs(images)


def resolve_size(config: PadimConfig, items: Sequence[ImageInput]) -> PadimConfig:
    """`config` with "auto"/"native" replaced by the size the training images give (a copy)."""
    n = len(items)
    if config.size not in ("auto", "native") or not n:
        return config
    sample = items[:: max(1, n // AUTO_SAMPLE)][:AUTO_SAMPLE]
    shapes = [image_shape(item) for item in sample]
    choose = auto_size if config.size == "auto" else native_size
    resolved = dataclasses.replace(config, size=choose(shapes))
    resolved.validate()  # the tiles, now that the input size is known
    return resolved


SIZED = (str, Path, np.ndarray)  # inputs whose size is known without decoding them
TINY = 4  # an image whose side is under 1/TINY of the others' median is a mistake
ASPECT_TOLERANCE = 0.15  # new images for `update` whose aspect ratio differs more: refused


def training_size(items: Sequence[ImageInput]) -> tuple[int, int] | None:
    """The median (width, height) of the training images (files and arrays: headers only),
    refusing images far smaller than the rest (a 3x3 thumbnail among camera frames would be
    upscaled into the Gaussians silently); None when no size is known without decoding."""
    sized = [(item, wh) for item in items if isinstance(item, SIZED) and (wh := _size(item))]
    if not sized:
        return None
    w = int(np.median([wh[0] for _, wh in sized]))
    h = int(np.median([wh[1] for _, wh in sized]))
    tiny = [(item, wh) for item, wh in sized if wh[0] * TINY < w or wh[1] * TINY < h]
    if tiny:
        item, (tw, th) = tiny[0]
        name = item if isinstance(item, str | Path) else "an array"
        raise PadimError(
            f"{len(tiny)} training image(s) are far smaller than the others ({w}x{h}), e.g. "
            f"{name} ({tw}x{th}): remove them, or fit them as a model of their own"
        )
    return w, h


def _size(item: ImageInput) -> tuple[int, int] | None:
    """An image's size from its header, None when unreadable (reading it says why, later)."""
    try:
        return image_shape(item)
    except PadimError:
        return None


def check_same_geometry(known: list[int] | None, items: Sequence[ImageInput]) -> None:
    """New good images for a fitted model must look like its training images: the same
    aspect ratio (images of another product or camera would move the Gaussians and the
    threshold silently)."""
    size = training_size(items)
    if not known or size is None:
        return
    was, now = known[0] / known[1], size[0] / size[1]
    if abs(now - was) > ASPECT_TOLERANCE * was:
        raise PadimError(
            f"the new images are {size[0]}x{size[1]} but the model was fitted on images of "
            f"{known[0]}x{known[1]} (another aspect ratio): are they of the same product and "
            "camera? Fit a model of their own"
        )


THRESHOLD_MOVE = 0.25  # an update that moves the threshold more than this says so


def aligned(items: list[tuple[int, ImageInput]], aligner: Aligner) -> list[tuple[int, ImageInput]]:
    """(index, item) pairs whose items are registered onto the reference when read."""
    return [(i, AlignedItem(item, aligner)) for i, item in items]


def alignment_summary(sample: list[Transform]) -> dict:
    """How well training images aligned (a sample of up to 32, the same for every engine):
    the quality's spread and how many could not be aligned (they still join the Gaussians:
    check them)."""
    bad = [t.reason for t in sample if not t.ok]
    out: dict = {
        "sampled": len(sample),
        "quality": score_summary(np.array([t.quality for t in sample])),
        "cannot_align": len(bad),
    }
    if bad:
        out["warning"] = f"{len(bad)} sampled training image(s) could not be aligned: {bad[0]}"
    return out


def threshold_moved(before: float | None, after: float | None) -> str | None:
    """A warning when `update` moved the threshold far: its held-out pool mixes scores of the
    older Gaussians (kept from earlier fits) with the new images' scores, so a large move is
    more likely the pool than the line; calibrate it on images of the line."""
    if before is None or after is None or before == 0:
        return None
    change = (after - before) / abs(before)
    if abs(change) <= THRESHOLD_MOVE:
        return None
    return (
        f"the threshold moved {change:+.0%} ({before:.4g} -> {after:.4g}): it is a quantile of "
        "held-out scores pooled from earlier fits and these images; check it with "
        "padim calibrate --good DIR (or --target-fpr on new good images)"
    )


def build_embedder(config: PadimConfig, weights: str | Path | None) -> Embedding:
    """The frozen backbone + channel selection (+ tiling) a resolved config describes."""
    spec = get_backbone(config.backbone)
    extractor = spec.build(weights, seed=config.seed)
    keep = config.channels or spec.default_keep
    projection = None
    if config.embedding == "semi-orthogonal":
        idx = torch.arange(spec.total_channels)
        projection = semi_orthogonal(spec.total_channels, keep, config.seed)
    else:
        idx = select_channels(spec.total_channels, keep, config.seed)
    embedder = Embedder(
        extractor, spec.normalisation, spec.channels, idx, spec.cpu_batch, projection
    )
    return Sizing(config).with_tiles(embedder)


def weights_description(backbone: str, weights: str | Path | None) -> str:
    if weights is None:
        return f"imagenet ({get_backbone(backbone).weights_source})"
    return "random" if str(weights) == "random" else f"file {Path(weights).name}"


class Fitter:
    """Fits one model: `fit(images)` -> `ModelState`; `update(state, images)` adds good images.

    `config` is validated; its size may still be "auto" or "native" (`plan` resolves it into
    this fitter's own copy). `roi` is the region of interest as given (a mask file or array).
    """

    def __init__(
        self,
        config: PadimConfig,
        weights: str | Path | None,
        device: torch.device,
        batch_size: int,
        progress: bool | ProgressSink = False,
        roi: str | Path | np.ndarray | None = None,
        align_reference: ImageInput | None = None,
        align_roi: str | Path | np.ndarray | None = None,
    ) -> None:
        self.config = config
        self.weights = weights
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self.roi = roi
        self.align_reference = align_reference
        self.align_roi = align_roi
        self.image_size: tuple[int, int] | None = None  # learned by `plan`
        self.image_digests: list[str] | None = None  # learned by `plan`: the lineage
        self.aligner: Aligner | None = None  # learned by `plan` when the config aligns
        self.alignment: dict | None = None  # how well a sample of the training images aligned

    @property
    def sizing(self) -> Sizing:
        return Sizing(self.config)

    @property
    def batch(self) -> int:
        """Images per forward pass (see `Sizing.effective_batch`)."""
        return self.sizing.effective_batch(self.batch_size)

    def progress_bar(self, total: int, desc: str, unit: str = "img") -> tqdm:
        """A terminal bar (progress=True), or one reporting to the progress sink given."""
        return progress_bar(total, desc, unit, self.progress)

    # ------------------------------------------------------------------ the fit

    def plan(self, images: ImageInput | Iterable[ImageInput]) -> FitPlan:
        """The training items and their seeded split into fitted and held-out images (the same
        for every engine, so a distributed fit sees exactly the local fit's images); resolves
        this fitter's input size."""
        items = training_items(images)
        self.image_size = training_size(items)  # also refuses tiny images, before any work
        self.config = resolve_size(self.config, items)
        try:  # the lineage; an item that is no image fails where the images are read
            self.image_digests = sorted(image_digest(item) for item in items)
        except TypeError:
            self.image_digests = None
        if len(items) < MIN_TRAIN_IMAGES:
            raise PadimError(
                f"need at least {MIN_TRAIN_IMAGES} good training images to fit a "
                f"covariance, got {len(items)}"
            )
        rng = np.random.default_rng(self.config.seed)
        plan = self.split(items, rng, MIN_TRAIN_IMAGES)
        if self.config.align != "none":
            self.aligner = self.make_aligner(items)
            plan.fit_items = aligned(plan.fit_items, self.aligner)
            plan.hold_items = aligned(plan.hold_items, self.aligner)
        return plan

    def make_aligner(self, items: Sequence[ImageInput]) -> Aligner:
        """The registration onto the reference part (given, or the most typical training
        image), matching inside `align_roi` (else the region of interest) when there is one."""
        cfg = self.config
        roi = self.align_roi if self.align_roi is not None else self.roi
        if roi is not None and not isinstance(roi, np.ndarray):
            roi = read_mask(roi)
        aligner = cfg.aligner(roi).fit(items, self.align_reference)
        sample = aligner.sample(items)
        # learned from the good images when not given, kept in the resolved config
        if cfg.align_min_quality is None:
            cfg.align_min_quality = round(aligner.learn_min_quality(sample), 4)
        self.alignment = alignment_summary([aligner.estimate_checked(t) for t in sample])
        return aligner

    def split(self, items: list[ImageInput], rng: np.random.Generator, keep: int) -> FitPlan:
        """Hold out `holdout_fraction` of the items (none when fewer than
        MIN_IMAGES_FOR_HOLDOUT), keeping at least `keep` of them to fit."""
        n = len(items)
        order = rng.permutation(n)
        n_hold = 0
        if n >= MIN_IMAGES_FOR_HOLDOUT:
            n_hold = max(0, min(n - keep, round(self.config.holdout_fraction * n)))
        indexed = list(enumerate(items))
        return FitPlan(
            n=n,
            fit_items=[indexed[i] for i in sorted(order[: n - n_hold])],
            hold_items=[indexed[i] for i in sorted(order[n - n_hold :])],
            started=time.perf_counter(),
        )

    def fit(
        self,
        images: ImageInput | Iterable[ImageInput],
        loader: Loader | None = None,
        gather: Gather | None = None,
    ) -> ModelState:
        """Fit the Gaussians on good images and calibrate the thresholds. `gather` replaces
        the local computation of the sums and held-out embeddings (the Ray engine's)."""
        plan = self.plan(images)
        if gather is None:
            self.sizing.check_memory(n_fit=len(plan.fit_items))
            embedder = build_embedder(self.config, self.weights).to(self.device)
        else:  # the engine's workers embed on their CPUs; the driver merges and factorises
            self.sizing.check_memory()
            embedder = build_embedder(self.config, self.weights).cpu().eval()
        with torch.inference_mode(), ExitStack() as stores:  # disk stores live to the end
            if gather is None:
                stats, holdout = self.gather(plan, embedder, loader, stores)
            else:
                stats, holdout = gather(self, plan, embedder, stores)
            return self.finish(plan, embedder.to(self.device), stats, holdout, loader)

    def gather(
        self, plan: FitPlan, embedder: Embedding, loader: Loader | None, stores: ExitStack
    ) -> tuple[GaussianStats, HoldoutStore]:
        """The fitted images' sums (in memory, or read chunk by chunk from their embeddings
        on disk when that is smaller) and the held-out images' embeddings on disk, computed
        here; the disk stores close with `stores`."""
        bar = self.progress_bar(plan.n, "fit")
        holdout = stores.enter_context(HoldoutStore())
        fitted = self.embeddings(embedder, plan.fit_items, loader, bar)
        if self.sizing.embeddings_on_disk(len(plan.fit_items)):
            train = stores.enter_context(HoldoutStore())
            for emb in fitted:
                train.add(emb)
            stats = GaussianStats.from_store(train)
        else:
            stats = GaussianStats.from_batches(fitted)
        # held out: kept on disk, scored by a model that never saw them, then added
        for emb in self.embeddings(embedder, plan.hold_items, loader, bar):
            holdout.add(emb)
        bar.close()
        return stats, holdout

    def embeddings(
        self,
        embedder: Embedding,
        items: Sequence[tuple[int, ImageInput]],
        loader: Loader | None,
        bar: tqdm,
    ) -> Iterator[torch.Tensor]:
        """Embedding batches of `items`, counted on `bar`."""
        for x in self.tensor_batches(items, loader):
            yield embedder(x)
            bar.update(len(x))

    def tensor_batches(
        self, items: Sequence[tuple[int, ImageInput]], loader: Loader | None = None
    ) -> Iterator[torch.Tensor]:
        """Batches of (index, item) pairs as image tensors on the model's device."""
        chunks = batches(items, self.batch)
        if loader is None:  # read and resize the next batch while this one is embedded
            for x in self.sizing.preprocess.stream([item for _, item in c] for c in chunks):
                yield torch.from_numpy(x).to(self.device)
            return
        for chunk in chunks:
            yield torch.stack([loader(i, item) for i, item in chunk]).to(self.device)

    def finish(
        self,
        plan: FitPlan,
        embedder: Embedding,
        stats: GaussianStats,
        holdout: HoldoutStore | None,
        loader: Loader | None = None,
    ) -> ModelState:
        """Factorise the summed statistics, score the held-out embeddings and calibrate a
        threshold per score mode (consumes `stats`)."""
        cfg = self.config
        with torch.inference_mode():
            keep = cfg.statistics == "keep"
            bar = self.progress_bar(stats.positions, "factorise", unit="pos")
            gaussian, held_out = fit_gaussians(
                stats,
                cfg.regularisation,
                holdout,
                not keep,
                bar.update,
                cfg.shrinkage,
                cfg.neighbourhood,
                cfg.representation(),
            )
            bar.close()
            kept = stats if keep else None  # every image's sums, held-out included
            del stats, holdout
            roi = self.roi_mask(plan)
            net = PadimNet(
                embedder,
                gaussian,
                cfg.sigma,
                cfg.score_mode,
                roi=roi,
                neighbourhood=cfg.neighbourhood,
            ).eval()
            source = HELD_OUT
            if held_out is not None:
                held_out = net.stitch_held_out(held_out)
            if held_out is None:  # too few images to hold any out: in-sample terms (optimistic)
                held_out = self.in_sample_terms(net, plan.fit_items, loader)
                source = "in-sample good training images (too few to hold out)"
            net.term_stats = term_statistics(held_out.mahalanobis, held_out.chebyshev)
            scores = self.mode_scores(net, held_out)
        calibration = Thresholds(cfg.score_mode)
        n_cal = held_out.mahalanobis.shape[0]
        calibration.from_holdout(scores, cfg.threshold_quantile, f"{n_cal} {source}")
        rho = gaussian.shrinkage_rho
        training = Summary(
            n_train=plan.n,
            n_holdout=len(plan.hold_items),
            fit_seconds=round(time.perf_counter() - plan.started, 3),
            weights=weights_description(cfg.backbone, self.weights),
            good_score_summary=score_summary(scores[cfg.score_mode]),
            shrinkage_intensity=None if rho is None else score_summary(rho.numpy()),
            warning=(
                f"fitted on {plan.n} image(s): the threshold comes from the training "
                "images themselves; calibrate it on labelled data"
                if plan.n < MIN_IMAGES_FOR_HOLDOUT
                else None
            ),
            roi=None if roi is None else self.roi_summary(roi),
            image_size=None if self.image_size is None else list(self.image_size),
            image_digests=self.image_digests,
        )
        training.alignment = self.alignment
        return ModelState(cfg, net, calibration, training, kept, self.device, self.aligner)

    def roi_summary(self, roi: torch.Tensor) -> dict:
        source = "array" if isinstance(self.roi, np.ndarray) else Path(str(self.roi)).name
        return {"source": source, "inside_fraction": round(float(roi.float().mean()), 6)}

    def roi_mask(self, plan: FitPlan) -> torch.Tensor | None:
        """The region of interest at the model input (H, W) bool, from `roi` given at the
        training images' geometry (same aspect ratio), or None."""
        if self.roi is None:
            return None
        mask = self.roi if isinstance(self.roi, np.ndarray) else read_mask(self.roi)
        mask = np.asarray(mask).astype(bool)
        if mask.ndim != 2:
            raise PadimError(
                f"the region of interest must be a single-channel mask, got shape {mask.shape}"
            )
        aligned = self.aligner.reference_size_ if self.aligner is not None else None
        w, h = aligned or image_shape(plan.fit_items[0][1])
        if abs(mask.shape[1] / mask.shape[0] - w / h) > 0.02 * w / h:
            raise PadimError(
                f"the region of interest is {mask.shape[1]}x{mask.shape[0]} but the "
                f"training images are {w}x{h}: give it at their geometry"
            )
        roi = self.sizing.preprocess.mask(mask)
        if not roi.any():
            raise PadimError("the region of interest is empty at the model's input geometry")
        return torch.from_numpy(np.ascontiguousarray(roi)).to(self.device)

    def in_sample_terms(
        self, net: PadimNet, items: Sequence[tuple[int, ImageInput]], loader: Loader | None
    ) -> HeldOut:
        k = net.neighbourhood
        terms: dict[tuple[int, int], tuple[list, list]] = {o: ([], []) for o in offsets(k)}
        for x in self.tensor_batches(items, loader):
            emb = net.embedder(x)
            for o, (maha, cheb) in terms.items():
                m, c = net.terms(shift_embeddings(emb, *o, k), "hybrid")
                assert m is not None and c is not None  # "hybrid" needs both terms
                maha.append(m)
                cheb.append(c)
        joined = {o: (torch.cat(m), torch.cat(c)) for o, (m, c) in terms.items()}
        own = joined.pop((0, 0))
        return HeldOut(own[0], own[1], joined or None)

    def mode_scores(self, net: PadimNet, held: HeldOut) -> dict[str, np.ndarray]:
        """The held-out images' scores (float64) under every score mode."""
        size = self.sizing.preprocess.output_hw
        out = {}
        n = held.mahalanobis.shape[0]
        step = self.batch  # full-size maps of a few images at a time
        for mode in SCORE_MODES:
            parts = [
                net.maps_from_patches(net.held_out_patches(held, slice(i, i + step), mode), size)[0]
                for i in range(0, n, step)
            ]
            out[mode] = torch.cat(parts).double().cpu().numpy()
        return out

    # ------------------------------------------------------------------ adding images

    def update(self, state: ModelState, images: ImageInput | Iterable[ImageInput]) -> ModelState:
        """Add good images to a fitted model without its old images (see `Padim.partial_fit`);
        `state` is changed in place and returned."""
        if state.statistics is None:
            raise PadimError(
                "this model keeps no training statistics (fitted with --statistics drop, "
                "or by an older padim): fit it again on all images, with --statistics keep"
            )
        items = training_items(images)
        if not items:
            raise PadimError("no new images to add")
        digests = [image_digest(item) for item in items]
        if state.aligner is not None:
            items = [AlignedItem(item, state.aligner) for item in items]
        training = state.training
        check_same_geometry(training.image_size if training else None, items)
        updates = list(training.updates or []) if training else []
        rng = np.random.default_rng([self.config.seed, len(updates) + 1])
        plan = self.split(items, rng, 0)
        net = state.net
        bar = self.progress_bar(plan.n, "update")
        with torch.inference_mode(), HoldoutStore() as holdout:
            stats = state.statistics
            if plan.fit_items:
                fitted = self.embeddings(net.embedder, plan.fit_items, None, bar)
                stats = stats.merge(GaussianStats.from_batches(fitted))
            for emb in self.embeddings(net.embedder, plan.hold_items, None, bar):
                holdout.add(emb)
            bar.close()
            if stats is state.statistics:  # fit_gaussians adds the held-out images to it
                stats = stats.copy()
            cfg = self.config
            gaussian, held_out = fit_gaussians(
                stats,
                cfg.regularisation,
                holdout,
                shrinkage=cfg.shrinkage,
                neighbourhood=cfg.neighbourhood,
                representation=cfg.representation(),
            )
            net.set_gaussian(gaussian)
            new_scores: dict[str, np.ndarray] = {}
            if held_out is not None:
                new_scores = self.mode_scores(net, net.stitch_held_out(held_out))
        state.statistics = stats
        before = state.calibration.current
        state.calibration.after_update(new_scores, self.config.threshold_quantile)
        seconds = round(time.perf_counter() - plan.started, 3)
        row: dict = {"added": plan.n, "held_out": len(plan.hold_items), "seconds": seconds}
        moved = threshold_moved(before, state.calibration.current)
        if moved:
            row["warning"] = moved
        updates.append({**row, "when": now_iso()})
        if training is not None:
            training.n_train += plan.n
            training.n_holdout += len(plan.hold_items)
            if training.image_digests is not None:
                training.image_digests = sorted(training.image_digests + digests)
            training.updates = updates
            good = state.calibration.holdout_scores.get(self.config.score_mode)
            if good is not None:
                training.good_score_summary = score_summary(good)
        return state
