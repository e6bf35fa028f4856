"""The studio's model work on a product's images (`padim.lifecycle.workshop`): what a fit will
cost before it starts (`propose`), the fit itself into the registry (`train`), judging a
version on the product's test images (`judge`, `rates`) and a version at another operating
point (`with_operating_point`). Long work reports to a `ProgressSink`, which may raise to
cancel it; nothing is registered or written until the work is done.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from padim.errors import NotFound, PadimError
from padim.files import write_text_atomic
from padim.lifecycle.database import Catalogue
from padim.lifecycle.registry import Registry, Version
from padim.lifecycle.workshop import DEFECT, GOOD, TEST, TRAIN, Workshop
from padim.memory import available_bytes
from padim.model.calibration import measured_point, rate
from padim.progress import ProgressSink

MIN_STUDIO_IMAGES = 10  # good training images a studio fit needs
DETAIL_TILE = 256  # the tile side of the "detail" geometry
JUDGE_BATCH = 8
SAVE_BYTES_PER_S = 400 * 2**20  # writing a model file (a local disk)
GEOMETRIES = ("standard", "detail")
ALIGNMENTS = ("none", "translation", "rigid", "similarity", "homography")


def geometry_params(name: str, image_wh: tuple[int, int]) -> dict[str, Any]:
    """The fit options of a geometry the studio offers: "standard" (the images' aspect at
    about 256x256 pixels) or "detail" (half the native resolution, cut into tiles: small
    defects on large images stay several patches wide)."""
    if name == "standard":
        return {"size": "auto", "crop": None}
    if name == "detail":
        w, h = (max(DETAIL_TILE, (side // 2) // 32 * 32) for side in image_wh)
        return {"size": (w, h), "crop": None, "tile": DETAIL_TILE, "tile_statistics": "location"}
    raise PadimError(f"geometry must be one of {', '.join(GEOMETRIES)}, not {name!r}")


def studio_model(geometry: str, align: str, image_wh: tuple[int, int], **kwargs: Any) -> Any:
    """An unfitted model as the studio fits it: training sums kept (retraining from the
    operators' false alarms updates them exactly)."""
    from padim.model.estimator import Padim

    if align not in ALIGNMENTS:
        raise PadimError(f"alignment must be one of {', '.join(ALIGNMENTS)}, not {align!r}")
    return Padim(**geometry_params(geometry, image_wh), align=align, statistics="keep", **kwargs)


def main_size(rows: list[dict[str, Any]]) -> tuple[int, int]:
    sizes = Counter((r["width"], r["height"]) for r in rows)
    return sizes.most_common(1)[0][0]


def training_rows(workshop: Workshop, product: str) -> list[dict[str, Any]]:
    rows = workshop.images(product, GOOD, TRAIN)
    if len(rows) < MIN_STUDIO_IMAGES:
        raise PadimError(
            f"{product} has {len(rows)} good training images; the studio fits on at least "
            f"{MIN_STUDIO_IMAGES} (a fifth of the good images are kept apart to judge it)"
        )
    return rows


def propose(catalogue: Catalogue, product: str, align: str = "none") -> dict[str, Any]:
    """Each geometry's input, Gaussian positions, model file size, memory while fitting and
    fitting time, measured on this computer (a forward pass and a factorisation timed)."""
    workshop = Workshop(catalogue)
    rows = training_rows(workshop, product)
    paths = workshop.paths(rows)
    image_wh = main_size(rows)
    names = ["standard"] + (["detail"] if max(image_wh) >= 4 * DETAIL_TILE // 2 else [])
    offers = [offer(name, align, image_wh, paths) for name in names]
    return {
        "product": product,
        "images": len(rows),
        "image_size": list(image_wh),
        "sizes": len({(r["width"], r["height"]) for r in rows}),
        "available_bytes": available_bytes(),
        "geometries": offers,
        "alignments": list(ALIGNMENTS),
    }


def offer(name: str, align: str, image_wh: tuple[int, int], paths: list[Path]) -> dict[str, Any]:
    from padim.model.fitting import resolve_size
    from padim.model.sizing import Sizing

    model = studio_model(name, align, image_wh)
    config = resolve_size(model.config, paths)
    sizing = Sizing(config)
    g = sizing.geometry()
    embed_s = embedding_seconds(config, sizing.effective_batch(model.batch_size))
    factorise_s = factorise_seconds(g["positions"], g["embedding_dim"])
    file_bytes = g["gaussian_file_bytes"] + g["statistics_file_bytes"]
    save_s = 2 * file_bytes / SAVE_BYTES_PER_S  # written, then copied into the catalogue
    return {
        "geometry": name,
        "input": g["input"],
        "tiling": g.get("tiling"),
        "positions": g["positions"],
        "model_file_bytes": file_bytes,
        "fit_memory_bytes": int(g["fit_statistics_bytes"] * 1.6),
        "seconds": {
            "embed": round(embed_s * len(paths), 1),
            "factorise": round(factorise_s, 1),
            "save": round(save_s, 1),
            "total": round(embed_s * len(paths) * 1.1 + factorise_s + save_s, 1),
        },
    }


def embedding_seconds(config: Any, batch: int) -> float:
    """Seconds per image through the backbone at this geometry (a batch timed after a
    warm-up pass)."""
    import torch

    from padim.model.fitting import build_embedder
    from padim.model.sizing import Sizing

    sizing = Sizing(config)
    embedder = build_embedder(config, None).eval()
    h, w = sizing.preprocess.output_hw
    n = max(1, min(batch, 4))
    x = torch.rand(n, 3, h, w)
    with torch.inference_mode():
        embedder(x[:1])
        start = time.perf_counter()
        embedder(x)
    return (time.perf_counter() - start) / n


def factorise_seconds(positions: int, dim: int, sample: int = 256) -> float:
    """Seconds to factorise `positions` covariances of `dim` channels: `sample` of them timed
    (Cholesky, the solve for the inverse and the log-determinant, in float64)."""
    import torch

    a = torch.rand(sample, dim, 2 * dim, dtype=torch.float64)
    cov = a @ a.transpose(1, 2) / (2 * dim) + 0.01 * torch.eye(dim, dtype=torch.float64)
    start = time.perf_counter()
    chol = torch.linalg.cholesky(cov)
    torch.cholesky_inverse(chol)
    # the fit's own factorisation (eigen-decomposition for minor Gaussians, float64 sums
    # turned into covariances) costs about three of these (measured on BSData and bottle)
    return (time.perf_counter() - start) * 3 * positions / sample


@dataclass
class Training:
    """Fit a product's model on its good training images and register it (one job)."""

    catalogue: Catalogue
    product: str
    geometry: str = "standard"
    align: str = "none"

    def run(self, actor: str, sink: ProgressSink) -> Version:
        workshop = Workshop(self.catalogue)
        rows = training_rows(workshop, self.product)
        sink("reading", 0, len(rows))
        model = studio_model(self.geometry, self.align, main_size(rows), progress=sink)
        model.fit(workshop.paths(rows))
        model.progress = False
        sink("registering", 0, None)
        registry = Registry(self.catalogue)
        with tempfile.TemporaryDirectory() as tmp:
            path = model.save(Path(tmp) / f"{self.product}.safetensors")
            note = f"trained in the studio: {len(rows)} images, {self.geometry} geometry"
            if self.align != "none":
                note += f", {self.align} alignment"
            return registry.register(self.product, path, actor, note)


# ----------------------------------------------------------------------------- judging


def evaluation_path(catalogue: Catalogue, product: str, number: int) -> Path:
    return catalogue.files / "products" / product / "evaluations" / f"v{number}.json"


def judge(catalogue: Catalogue, product: str, number: int, sink: ProgressSink) -> dict[str, Any]:
    """Score the product's test images (held-out good ones and defects) with a version; the
    result is kept beside the product's images (`evaluation`)."""
    from padim.model.estimator import Padim

    version = Registry(catalogue).version(product, number)
    workshop = Workshop(catalogue)
    rows = workshop.images(product, split=TEST)  # may be none: an empty evaluation
    model = Padim.load(version.path, "cpu")
    scores: list[float] = []
    sink("judging", 0, len(rows))
    for start in range(0, len(rows), JUDGE_BATCH):
        chunk = workshop.paths(rows[start : start + JUDGE_BATCH])
        s, _ = model.score(chunk)
        scores.extend(float(x) for x in np.asarray(s))
        sink("judging", len(scores), len(rows))
    result = {
        "product": product,
        "version": version.number,
        "threshold": float(model.threshold_),
        "operating_points": {n: p.threshold for n, p in model.operating_points_.items()},
        "images": [
            {
                "id": r["id"],
                "name": r["name"],
                "kind": r["kind"],
                "defect_type": r["defect_type"],
                "mask": r["mask"] is not None,
                "score": round(s, 4),
            }
            for r, s in zip(rows, scores, strict=True)
        ],
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_text_atomic(evaluation_path(catalogue, product, number), json.dumps(result))
    return result


def evaluation(catalogue: Catalogue, product: str, number: int) -> dict[str, Any]:
    path = evaluation_path(catalogue, product, number)
    if not path.is_file():
        raise NotFound(f"version {number} of {product} has not been judged yet")
    return json.loads(path.read_text())


def rates(result: dict[str, Any], threshold: float) -> dict[str, Any]:
    """False alarms among the good test images and defects caught, overall and per defect
    type, at `threshold` (score above it: flagged), with 95 % intervals."""
    good = [i["score"] for i in result["images"] if i["kind"] == GOOD]
    bad = [i for i in result["images"] if i["kind"] == DEFECT]

    def counted(k: int, n: int) -> dict[str, Any] | None:
        return rate(k, n) if n else None

    types = sorted({i["defect_type"] for i in bad})
    return {
        "threshold": threshold,
        "false_alarms": counted(sum(s > threshold for s in good), len(good)),
        "caught": counted(sum(i["score"] > threshold for i in bad), len(bad)),
        "per_type": {
            t: counted(
                sum(i["score"] > threshold for i in bad if i["defect_type"] == t),
                sum(1 for i in bad if i["defect_type"] == t),
            )
            for t in types
        },
    }


def with_operating_point(
    catalogue: Catalogue, product: str, number: int, threshold: float, actor: str
) -> Version:
    """A new version: version `number` with `threshold` as its operating point (the rates on
    the product's test images kept with it), registered with `number` as its parent."""
    from padim.model.estimator import Padim

    result = evaluation(catalogue, product, number)
    registry = Registry(catalogue)
    base = registry.version(product, number)
    model = Padim.load(base.path, "cpu", statistics=True)
    good = np.array([i["score"] for i in result["images"] if i["kind"] == GOOD])
    bad = np.array([i["score"] for i in result["images"] if i["kind"] == DEFECT])
    point = measured_point(
        "studio",
        threshold,
        model.config.score_mode,
        "chosen in the studio",
        f"{good.size} good test images and {bad.size} defects of {product}",
        good,
        bad,
    )
    model.add_operating_point(point)
    measured = rates(result, threshold)
    with tempfile.TemporaryDirectory() as tmp:
        path = model.save(Path(tmp) / f"{product}.safetensors")
        note = f"v{number} at threshold {threshold:.4g} (chosen in the studio)"
        version = registry.register(
            product, path, actor, note, parent=number, evaluation={"studio": measured}
        )
    moved = {**result, "version": version.number, "threshold": threshold}
    write_text_atomic(evaluation_path(catalogue, product, version.number), json.dumps(moved))
    return version


# ----------------------------------------------------------------------------- jobs
# Module-level, so a job's child process can run them (`padim.service.jobs`): each opens the
# catalogue itself from its URL and files folder.


def train_job(
    url: str, files: str, product: str, geometry: str, align: str, actor: str, sink: ProgressSink
) -> dict[str, Any]:
    """Fit, register and judge a version of `product`."""
    from padim.lifecycle.database import open_catalogue

    catalogue = open_catalogue(url, files)
    version = Training(catalogue, product, geometry, align).run(actor, sink)
    judge(catalogue, product, version.number, sink)
    return {"version": version.number}


def judge_job(url: str, files: str, product: str, number: int, sink: ProgressSink) -> dict:
    from padim.lifecycle.database import open_catalogue

    judge(open_catalogue(url, files), product, number, sink)
    return {"version": number}


def capture_job(
    url: str,
    files: str,
    product: str,
    source: str,
    frames: int,
    every: int,
    actor: str,
    max_pixels: int,
    sink: ProgressSink,
) -> dict[str, list]:
    """`frames` frames (every `every`-th) of a camera or stream `padim watch` reads, added to
    `product` as good images (PNG)."""
    import io

    from padim.data.video import read_frames
    from padim.lifecycle.database import open_catalogue
    from padim.lifecycle.workshop import NewImage

    workshop = Workshop(open_catalogue(url, files))
    added: dict[str, list] = {"added": [], "skipped": [], "refused": []}
    sink("capturing", 0, frames)
    for n, frame in enumerate(read_frames(source, every), 1):
        buffer = io.BytesIO()
        frame.image.save(buffer, "PNG")
        new = NewImage(f"frame-{frame.index:06d}.png", buffer.getvalue())
        got = workshop.add(product, [new], GOOD, actor, max_pixels)
        for key in added:
            added[key] += got[key]
        sink("capturing", n, frames)
        if n >= frames:
            break
    return added
