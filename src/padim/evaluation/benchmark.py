"""`padim benchmark`: fit and evaluate every (backbone, category) pair of an MVTec AD root and
write results.json / results.csv, tables.md in the published layout, and figures.

Report files are rewritten (atomically) after every pair, so an interrupted run keeps what it
finished. Tables and published numbers live in `padim.tables` and `padim.published`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from padim import __version__, options
from padim.core.backbones import get_backbone
from padim.data.datasets import (
    Sample,
    is_mvtec_category,
    is_stc,
    mvtec_test_set,
    stc_scenes,
    stc_test_set,
    stc_training_frames,
)
from padim.data.preprocess import as_wh, resolve_crop, to_json
from padim.errors import PadimError
from padim.evaluation.evaluate import EvaluationRun, evaluate
from padim.evaluation.figures import roc_curves, roc_figure, run_figure
from padim.evaluation.metrics import format_metric
from padim.evaluation.perturb import (
    RandomRotateCrop,
    make_perturbation,
    native_photo,
    training_loader,
)
from padim.evaluation.published import CATEGORIES
from padim.evaluation.tables import render_tables, run_label
from padim.files import write_text_atomic
from padim.memory import PeakRSS
from padim.model.estimator import Padim
from padim.model.fitting import training_items

CSV_FIELDS = (
    "backbone",
    "geometry",
    "input",
    "tiles",
    "positions",
    "category",
    "perturbation",
    "score_mode",
    "shrinkage",
    "covariance",
    "size",
    "crop",
    "channels",
    "n_train",
    "n_test",
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "region_recall",
    "image_f1",
    "pixel_f1",
    "image_f1_at_threshold",
    "pixel_f1_at_threshold",
    "image_balanced_accuracy",
    "image_accuracy_at_threshold",
    "threshold",
    "fit_seconds",
    "predict_ms_per_image",
    "peak_rss_fit_mib",
    "peak_rss_predict_mib",
    "model_mib",
)


@dataclass
class BenchmarkOptions:
    """What to run and where to write; mirrors the CLI options."""

    root: Path
    out: Path
    categories: list[str] | None = None  # None: every category found under root
    backbones: list[str] = field(default_factory=lambda: list(options.BENCHMARK_BACKBONES.default))
    size: int | tuple[int, int] | str = options.SIZE.default  # side, (width, height), "auto"
    crop: int | tuple[int, int] | str | None = options.CROP.default
    tile: int | tuple[int, int] | None = options.TILE.default
    tile_overlap: int | None = options.TILE_OVERLAP.default
    tile_statistics: str = options.TILE_STATISTICS.default
    channels: int | str | None = options.CHANNELS.default  # None: the backbone's; "all"
    embedding: str = options.EMBEDDING.default
    align: str = options.ALIGN.default
    align_max_shift: float = options.ALIGN_MAX_SHIFT.default
    align_max_angle: float = options.ALIGN_MAX_ANGLE.default
    align_max_scale: float = options.ALIGN_MAX_SCALE.default
    align_min_quality: float = options.ALIGN_MIN_QUALITY.default
    neighbourhood: int = options.NEIGHBOURHOOD.default
    seed: int = options.SEED.default
    weights: str | None = options.WEIGHTS.default
    covariance: str = options.COVARIANCE.default
    components: int = options.COMPONENTS.default
    storage: str = options.STORAGE.default
    score_mode: str = options.SCORE_MODE.default
    shrinkage: str = options.SHRINKAGE.default
    batch_size: int = options.BATCH_SIZE.default
    device: str = options.DEVICE.default
    perturb: list[str] = field(default_factory=list)
    geometries: list[str] = field(default_factory=list)  # GEOMETRY specs; [] : size/crop/tile
    compare_published: bool = False
    keep_models: bool = False
    figures: bool = True
    progress: bool = True
    command: str = ""
    every: int = options.EVERY.default  # STC: every Nth frame, training and test


def parse_geometry(spec: str) -> dict[str, Any]:
    """ "SIZE[,crop=C][,tile=T][,overlap=O][,statistics=S]" -> Padim keyword arguments, e.g.
    "256", "auto", "800x320", "native,tile=256,statistics=shared" (crop defaults to none)."""
    from padim.data.preprocess import parse_size

    def geometry(text: str) -> Any:
        return text if text in ("auto", "native", "none") else parse_size(text)

    head, *rest = [p.strip() for p in spec.split(",")]
    out: dict[str, Any] = {"size": geometry(head.lower()), "crop": None}
    keys = {
        "crop": "crop",
        "tile": "tile",
        "overlap": "tile_overlap",
        "statistics": "tile_statistics",
        "align": "align",
        "neighbourhood": "neighbourhood",
        "covariance": "covariance",
        "components": "components",
    }
    for part in rest:
        key, sep, value = part.partition("=")
        if not sep or key not in keys:
            raise PadimError(
                f"--geometry {spec!r}: expected SIZE[,crop=C][,tile=T][,overlap=O]"
                "[,statistics=location|shared][,align=MODE][,neighbourhood=K]"
                "[,covariance=full|minor][,components=R]"
            )
        if key == "crop":
            out["crop"] = None if value == "none" else geometry(value)
        elif key == "tile":
            out["tile"] = parse_size(value)
        elif key == "overlap":
            if not value.isdigit():
                raise PadimError(f"--geometry {spec!r}: overlap must be a whole number of pixels")
            out["tile_overlap"] = int(value)
        elif key in ("neighbourhood", "components"):
            if not value.isdigit():
                raise PadimError(f"--geometry {spec!r}: {key} must be a whole number")
            out[key] = int(value)
        else:
            out[keys[key]] = value
    return out


def geometry_runs(opts: BenchmarkOptions) -> list[tuple[BenchmarkOptions, str | None]]:
    """(options, label) per geometry to run: the --geometry specs, else the one geometry of
    --size/--crop/--tile (unlabelled, as before)."""
    if not opts.geometries:
        return [(opts, None)]
    return [(dataclasses.replace(opts, **parse_geometry(g)), g) for g in opts.geometries]


def find_categories(
    root: Path, wanted: list[str] | None
) -> tuple[list[tuple[str, Path]], list[str]]:
    """(name, folder) of each category to run, and notes for the ones skipped. `root` may be
    an MVTec AD root (one folder per category) or a single category folder."""
    if not root.is_dir():
        raise PadimError(f"--root is not a folder: {root}")
    if is_stc(root):  # one model per camera scene: PaDiM's Gaussians are per position
        return _stc_scenes(root, wanted)
    if (root / "train" / "good").is_dir():  # a single category
        present = {root.name: root}
    else:
        present = {
            p.name: p
            for p in sorted(root.iterdir())
            if p.is_dir() and is_mvtec_category(p) and (p / "test").is_dir()
        }
    if wanted is None:
        order = [c for c in CATEGORIES if c in present] + sorted(set(present) - set(CATEGORIES))
        missing = [c for c in CATEGORIES if c not in present]
        notes = (
            [
                f"{len(missing)} MVTec AD categories not under {root}: "
                f"{', '.join(missing)} (shown as '-')"
            ]
            if missing
            else []
        )
    else:
        order, notes = _chosen(list(present), wanted, "category", f"not found under {root}")
    if not order:
        raise PadimError(f"no MVTec AD categories (folders with train/good and test/) under {root}")
    return [(name, present[name]) for name in order], notes


def _stc_scenes(root: Path, wanted: list[str] | None) -> tuple[list[tuple[str, Path]], list[str]]:
    """STC's scenes ("scene01", ...) that have test videos; `wanted` as "01" or "scene01"."""
    present = [f"scene{s}" for s in stc_scenes(root)]
    notes: list[str] = []
    if wanted is None:
        order = present
    else:
        asked = [w if w.startswith("scene") else f"scene{w}" for w in wanted]
        order, notes = _chosen(present, asked, "scene", f"has no test videos under {root}")
    if not order:
        raise PadimError(f"no STC scenes with test videos under {root}")
    return [(name, root) for name in order], notes


def _chosen(
    present: list[str], wanted: list[str], kind: str, missing: str
) -> tuple[list[str], list[str]]:
    """The wanted names that are present, in the order asked, and a note for each one that is
    not ("<kind> 'x' <missing>: skipped")."""
    order = [name for name in wanted if name in present]
    notes = [f"{kind} {name!r} {missing}: skipped" for name in wanted if name not in present]
    return order, notes


def category_data(opts: BenchmarkOptions, category: str, folder: Path) -> tuple[Any, list[Sample]]:
    """A category's training data (for Padim.fit) and its labelled test samples."""
    if is_stc(folder):
        scene = category.removeprefix("scene")
        return (
            stc_training_frames(folder, opts.every, scene),
            stc_test_set(folder, opts.every, scene),
        )
    return folder, mvtec_test_set(folder)


def _row(
    opts: BenchmarkOptions,
    backbone: str,
    category: str,
    model: Padim,
    run: EvaluationRun,
    fit_rss: int,
    pred_rss: int,
    model_bytes: int,
    label: str | None = None,
) -> dict[str, Any]:
    m = run.metrics
    geometry = model.geometry()
    row: dict[str, Any] = {
        "backbone": backbone,
        "geometry": label,
        "input": "x".join(map(str, geometry["input"])),
        "tiles": "x".join(map(str, geometry["tiling"]["tiles"])) if "tiling" in geometry else "",
        "positions": geometry["positions"],
        "category": category,
        "perturbation": m["perturbation"],
        "cannot_align": m.get("cannot_align"),
        "score_mode": opts.score_mode,
        "shrinkage": opts.shrinkage,
        "covariance": model.config_.covariance
        + (f" r={model.config_.components}" if model.config_.covariance == "minor" else ""),
        "size": to_json(as_wh(model.preprocess.size)),
        "crop": None if model.preprocess.crop is None else to_json(as_wh(model.preprocess.crop)),
        "channels": model.fitted_net().embedder.dim,
        "n_train": model.info["n_train"],
        "n_test": m["n_images"],
        "n_good": m["n_good"],
        "n_anomalous": m["n_anomalous"],
    }
    for key in CSV_FIELDS:
        if key in m and key not in row:
            row[key] = m[key]
    row.update(
        {
            "fit_seconds": model.info["fit_seconds"],
            "predict_ms_per_image": round(1000 * run.score_seconds / max(1, m["n_images"]), 2),
            "peak_rss_fit_mib": round(fit_rss / 2**20, 1),
            "peak_rss_predict_mib": round(pred_rss / 2**20, 1),
            "model_mib": round(model_bytes / 2**20, 2),
            "per_type_image_auroc": m.get("per_type_image_auroc"),
            "notes": m.get("notes", []),
        }
    )
    return row


def run_benchmark(opts: BenchmarkOptions) -> list[dict[str, Any]]:
    """Fit and evaluate each (backbone, category) pair; write the reports after each pair."""
    for name in opts.backbones:
        get_backbone(name)  # unknown names fail before any work
    crop = resolve_crop(opts.size, opts.crop)
    perturbations = [make_perturbation(p, opts.size, crop, opts.seed) for p in opts.perturb]
    categories, notes = find_categories(opts.root, opts.categories)
    for note in notes:
        _log(opts, f"note: {note}")
    opts.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    curves: dict[str, list[tuple[str, dict]]] = {}
    plan = [(b, g, name) for b in opts.backbones for g, name in geometry_runs(opts)]
    total = len(categories) * len(plan)
    step = 0
    for backbone, g_opts, geometry in plan:
        for category, folder in categories:
            step += 1
            where = f"{backbone}{f' @ {geometry}' if geometry else ''} / {category}"
            _log(opts, f"[{step}/{total}] {where}: fitting")
            training, samples = category_data(opts, category, folder)
            model, fit_rss, model_bytes = _fit(g_opts, backbone, category, training)
            with PeakRSS() as pred_mem:
                run = evaluate(model, samples)
            runs = [
                (
                    run,
                    _row(
                        g_opts,
                        backbone,
                        category,
                        model,
                        run,
                        fit_rss,
                        pred_mem.peak_bytes,
                        model_bytes,
                        geometry,
                    ),
                )
            ]
            for perturbation in perturbations:
                _log(opts, f"[{step}/{total}] {where}: {perturbation.name}")
                if perturbation.train:  # the paper's protocol: refit on perturbed images
                    p_model, p_fit_rss, p_bytes = _fit(
                        g_opts, backbone, category, training, perturbation
                    )
                else:
                    p_model, p_fit_rss, p_bytes = model, fit_rss, model_bytes
                with PeakRSS() as p_mem:
                    p_run = evaluate(p_model, samples, perturbation)
                runs.append(
                    (
                        p_run,
                        _row(
                            g_opts,
                            backbone,
                            category,
                            p_model,
                            p_run,
                            p_fit_rss,
                            p_mem.peak_bytes,
                            p_bytes,
                            geometry,
                        ),
                    )
                )
            for run, row in runs:
                results.append(row)
                label = run_label(row)
                curves.setdefault(category, []).append((label, roc_curves(run)))
                if opts.figures:
                    run_figure(run, row, opts.out / "figures" / f"{category}__{_slug(label)}.png")
                _log(
                    opts,
                    f"  {label}: image AUROC {format_metric(row['image_auroc'])}, "
                    f"pixel AUROC {format_metric(row['pixel_auroc'])}, "
                    f"AUPRO {format_metric(row['aupro'])}; fit "
                    f"{row['fit_seconds']:.1f} s, {row['predict_ms_per_image']:.0f} ms/image",
                )
            if opts.figures:
                roc_figure(category, curves[category], opts.out / "figures" / f"{category}_roc.png")
            write_reports(results, opts, notes)
            del model
    return results


def perturbed_training_photos(training: Any, perturbation: RandomRotateCrop) -> list[np.ndarray]:
    """The training images perturbed as photos at their own resolution (the training stream's
    draws), for models that align."""
    train = perturbation.for_training()
    items = training_items(training)
    return [native_photo(train, i, item)[0] for i, item in enumerate(items)]


def _fit(
    opts: BenchmarkOptions,
    backbone: str,
    category: str,
    training: Any,
    perturbation: RandomRotateCrop | None = None,
) -> tuple[Padim, int, int]:
    """Fit one model (on perturbed training images for the paper's Rd-MVTec protocol);
    return it with its peak fit RSS and its file size."""
    params = set(Padim().get_params()) - {"backbone"}
    given = {k: v for k, v in dataclasses.asdict(opts).items() if k in params}
    model = Padim(backbone=backbone, **given)
    loader = None if perturbation is None else training_loader(perturbation, model.preprocess)
    if perturbation is not None and model.align != "none":  # the photos are registered
        training = perturbed_training_photos(training, perturbation)
        # as the non-aligned protocol does: the perturbed crop is the whole model input
        w, h = model.preprocess.output_wh
        model.set_params(size=w if w == h else (w, h), crop=None)
        loader = None
    with PeakRSS() as mem:
        model.fit(training, loader=loader)
    if perturbation is not None and model.training_ is not None:
        model.training_.training_perturbation = perturbation.name
    name = f"{category}__{backbone}" + (f"__{perturbation.name}" if perturbation else "")
    if opts.keep_models:
        size = model.save(opts.out / "models" / f"{name}.safetensors").stat().st_size
    else:
        with tempfile.TemporaryDirectory(dir=opts.out) as tmp:
            size = model.save(Path(tmp) / "model.safetensors").stat().st_size
    return model, mem.peak_bytes, size


def _slug(text: str) -> str:
    return text.replace(", ", "__").replace(" ", "_")


def _log(opts: BenchmarkOptions, message: str) -> None:
    if opts.progress:
        print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- reports


def environment() -> dict[str, Any]:
    return {
        "padim": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_reports(results: list[dict[str, Any]], opts: BenchmarkOptions, notes: list[str]) -> None:
    """results.json, results.csv and tables.md in opts.out, each written atomically."""
    meta = {
        "command": opts.command,
        "root": str(opts.root),
        "size": opts.size if isinstance(opts.size, int | str) else to_json(opts.size),
        "crop": resolve_crop(opts.size, opts.crop),
        "seed": opts.seed,
        "weights": opts.weights or "imagenet",
        "perturb": opts.perturb,
        "environment": environment(),
        "notes": notes,
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_text_atomic(
        opts.out / "results.json", json.dumps({"meta": meta, "results": results}, indent=2) + "\n"
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in results)
    write_text_atomic(opts.out / "results.csv", buf.getvalue())
    write_text_atomic(
        opts.out / "tables.md",
        render_tables(results, meta, compare_published=opts.compare_published),
    )
