"""The studio's HTTP routes (a service started with a catalogue): a product's images (upload,
import from a server folder, capture from a camera, masks), the training proposal, training
and judging as background jobs, a version's evaluation with its rates at any threshold and
heat maps, and a version at a chosen operating point. Reads need READ, changes an engineer."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from padim import options
from padim.data.images import IMAGE_EXTENSIONS
from padim.data.pictures import render_pictures
from padim.deploy.scorers import Scorer, decide_scored, item_geometry, load_scorer, score_files
from padim.errors import PadimError
from padim.lifecycle import training
from padim.lifecycle.registry import Registry
from padim.lifecycle.retrain import retrain_job
from padim.lifecycle.workshop import GOOD, NewImage, Workshop
from padim.service.access import READ, actor, require
from padim.service.catalogue_routes import life_of, run
from padim.service.inspection import png_base64
from padim.service.jobs import JobBoard
from padim.service.requests import ApiError, read_uploads

router = APIRouter(prefix="/v1/studio")
LOADED_VERSIONS = 2  # versions kept in memory for heat maps (two compared side by side)
MAX_IMPORT = 10_000  # images read from a server folder or a camera at once


class NewProduct(BaseModel):
    product: str


class Import(BaseModel):
    folder: str = Field(description="a folder on the server, under one of --import-root")
    kind: str = GOOD
    defect_type: str = ""


class Capture(BaseModel):
    source: str = Field(description="a camera or stream `padim watch` reads (rtsp://, /dev/...)")
    frames: int = Field(50, ge=1, le=MAX_IMPORT)
    every: int = Field(1, ge=1, description="keep every n-th frame")


class TrainRequest(BaseModel):
    geometry: str = "standard"
    align: str = "none"
    estimate_s: float | None = None


class OperatingPoint(BaseModel):
    threshold: float


def workshop(request: Request) -> Workshop:
    return Workshop(life_of(request).catalogue)


def jobs(request: Request) -> JobBoard:
    return request.app.state.jobs


# ----------------------------------------------------------------------------- products


@router.get("/products", summary="Products with their image counts")
async def products(request: Request) -> dict:
    require(request, READ)
    return {"products": await run(workshop(request).products)}


@router.post("/products", summary="Create a product")
async def create(request: Request, body: NewProduct) -> dict:
    who = require(request, "engineer")
    await run(workshop(request).create, body.product.strip(), actor(who))
    return {"product": body.product.strip()}


@router.get("/products/{product}", summary="A product's images summed up, and its jobs")
async def summary(request: Request, product: str) -> dict:
    require(request, READ)
    found = await run(workshop(request).summary, product)
    return {**found, "jobs": jobs(request).listing(product)[:5]}


@router.get("/products/{product}/near-duplicates", summary="Images that are the same view")
async def near_duplicates(request: Request, product: str) -> dict:
    require(request, READ)
    ws = workshop(request)
    key = await run(ws.version_key, product)
    cache: dict = request.app.state.near_duplicates  # product -> (key, groups)
    if cache.get(product, (None,))[0] != key:
        cache[product] = (key, await run(ws.near_duplicates, product))
    return {"groups": cache[product][1]}


@router.get("/products/{product}/images", summary="A product's images, oldest first")
async def images(
    request: Request,
    product: str,
    kind: str | None = None,
    split: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict:
    require(request, READ)
    limit = min(max(limit, 1), 1000)
    rows = await run(workshop(request).images, product, kind, split, limit, max(offset, 0))
    return {"images": rows}


@router.post("/products/{product}/images", summary="Add images (multipart, any field)")
async def add_images(
    request: Request, product: str, kind: str = GOOD, defect_type: str = ""
) -> dict:
    """Good images to train on, or defects (kind=defect, with their type) to judge with; at
    most --max-batch-images per request, each at most --max-upload-mb."""
    who = require(request, "engineer")
    settings = request.app.state.service.settings
    uploads = await read_uploads(request, settings, batch=True)
    for u in uploads:
        if len(u.data) > settings.max_upload_bytes:
            raise ApiError(413, "too_large", f"{u.name} is larger than --max-upload-mb")
    new = [NewImage(u.name, u.data, defect_type) for u in uploads]
    ws = workshop(request)
    return await run(ws.add, product, new, kind, actor(who), settings.max_pixels)


@router.post("/products/{product}/import", summary="Add the images of a server folder")
async def import_folder(request: Request, product: str, body: Import) -> dict:
    who = require(request, "engineer")
    folder = allowed_folder(request, body.folder)
    paths = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not paths:
        raise ApiError(422, "no_images", f"no images in {folder}")
    if len(paths) > MAX_IMPORT:
        raise ApiError(422, "too_many", f"{len(paths)} images in {folder}: at most {MAX_IMPORT}")
    ws, settings = workshop(request), request.app.state.service.settings

    def add() -> dict:
        new = [NewImage(p.name, p.read_bytes(), body.defect_type) for p in paths]
        return ws.add(product, new, body.kind, actor(who), settings.max_pixels)

    return await run(add)


def allowed_folder(request: Request, given: str) -> Path:
    roots = [Path(r).resolve() for r in request.app.state.service.settings.import_roots]
    if not roots:
        raise ApiError(
            403,
            "no_import_roots",
            "this service reads no server folders: start it with --import-root DIR",
        )
    folder = Path(given).expanduser().resolve()
    if not any(folder == r or r in folder.parents for r in roots):
        raise ApiError(403, "outside_import_roots", f"{given} is not under an --import-root")
    if not folder.is_dir():
        raise ApiError(404, "not_found", f"not a folder: {given}")
    return folder


@router.post("/products/{product}/capture", summary="Add frames of a camera or stream (a job)")
async def capture(request: Request, product: str, body: Capture) -> dict:
    who = require(request, "engineer")
    await run(workshop(request).check_product, product)
    source = body.source.strip()
    if "://" not in source and not source.isdigit() and not source.startswith("/dev/video"):
        allowed_folder(request, str(Path(source).parent))  # a file: under --import-root only
    pixels = request.app.state.service.settings.max_pixels
    args = (*where(request), product, source, body.frames, body.every, actor(who), pixels)
    job = await run(jobs(request).start, "capture", product, actor(who), training.capture_job, args)
    return job.to_dict()


def where(request: Request) -> tuple[str, str]:
    """The catalogue's URL and files folder: what a job's process opens."""
    catalogue = life_of(request).catalogue
    return catalogue.url, str(catalogue.files)


@router.get("/images/{image_id}/{what}", summary="An image, its thumbnail or its mask")
async def image_file(request: Request, image_id: int, what: str) -> FileResponse:
    require(request, READ)
    if what not in ("image", "thumb", "mask"):
        raise ApiError(404, "not_found", "image, thumb or mask")
    path = await run(workshop(request).file_of, image_id, what)
    if not path.is_file():
        raise ApiError(404, "not_found", f"the {what} of image {image_id} is not on disk")
    return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})


@router.put("/images/{image_id}/mask", summary="Draw a defect's mask (PNG, non-zero: defect)")
async def put_mask(request: Request, image_id: int) -> dict:
    who = require(request, "engineer")
    settings = request.app.state.service.settings
    upload = (await read_uploads(request, settings, batch=False))[0]
    return await run(workshop(request).set_mask, image_id, upload.data, actor(who))


@router.delete("/images/{image_id}", summary="Take an image out of its product")
async def remove_image(request: Request, image_id: int) -> dict:
    who = require(request, "engineer")
    await run(workshop(request).remove, image_id, actor(who))
    return {"removed": image_id}


# ----------------------------------------------------------------------------- training


@router.get("/products/{product}/proposal", summary="What each geometry will cost to fit")
async def proposal(request: Request, product: str, align: str = "none") -> dict:
    require(request, "engineer")
    return await run(training.propose, life_of(request).catalogue, product, align)


@router.post("/products/{product}/train", summary="Train a version in the background")
async def train(request: Request, product: str, body: TrainRequest) -> dict:
    """Fit on the good training images, register the version, judge it on the test images;
    GET /v1/studio/jobs/{id} follows it."""
    who = require(request, "engineer")
    await run(training.studio_model, body.geometry, body.align, (640, 480))  # checks the names
    await run(training.training_rows, workshop(request), product)  # enough images?
    args = (*where(request), product, body.geometry, body.align, actor(who))
    board = jobs(request)
    job = await run(
        board.start, "train", product, actor(who), training.train_job, args, body.estimate_s
    )
    return job.to_dict()


@router.post("/products/{product}/retrain", summary="Retrain from feedback (a job)")
async def retrain(request: Request, product: str) -> dict:
    """`POST /v1/products/{p}/retrain` as a job with progress: production updated with the
    operators' false alarms, gated, registered at the candidate alias."""
    who = require(request, "engineer")
    await run(Registry(life_of(request).catalogue).version, product, options.ALIAS.default)
    args = (*where(request), product, actor(who))
    job = await run(jobs(request).start, "retrain", product, actor(who), retrain_job, args)
    return job.to_dict()


@router.post("/products/{product}/versions/{version}/judge", summary="Judge a version (a job)")
async def judge(request: Request, product: str, version: int) -> dict:
    who = require(request, "engineer")
    await run(Registry(life_of(request).catalogue).version, product, version)
    args = (*where(request), product, version)
    job = await run(jobs(request).start, "judge", product, actor(who), training.judge_job, args)
    return job.to_dict()


@router.get("/jobs", summary="The studio's jobs in this process, newest first")
async def list_jobs(request: Request, product: str | None = None) -> dict:
    require(request, READ)
    return {"jobs": jobs(request).listing(product)}


@router.get("/jobs/{job_id}", summary="A job's progress, result or error")
async def job(request: Request, job_id: int) -> dict:
    require(request, READ)
    return (await run(jobs(request).get, job_id)).to_dict()


@router.post("/jobs/{job_id}/cancel", summary="Stop a job at its next image")
async def cancel(request: Request, job_id: int) -> dict:
    require(request, "engineer")
    return (await run(jobs(request).cancel, job_id)).to_dict()


# ----------------------------------------------------------------------------- judging


@router.get("/products/{product}/versions/{version}/evaluation", summary="Scores and rates")
async def evaluation(
    request: Request, product: str, version: int, threshold: float | None = None
) -> dict:
    """Every test image's score, the operating points, and the rates at `threshold` (default:
    the version's own)."""
    require(request, READ)
    result = await run(training.evaluation, life_of(request).catalogue, product, version)
    at = result["threshold"] if threshold is None else threshold
    return {**result, "rates": training.rates(result, at)}


@router.get("/products/{product}/versions/{version}/rates", summary="Rates at a threshold")
async def rates(request: Request, product: str, version: int, threshold: float) -> dict:
    require(request, READ)
    result = await run(training.evaluation, life_of(request).catalogue, product, version)
    return training.rates(result, threshold)


@router.post("/products/{product}/versions/{version}/operating-point", summary="Set a threshold")
async def operating_point(
    request: Request, product: str, version: int, body: OperatingPoint
) -> dict:
    """A new version: this one with `threshold` as its operating point (parent: this one)."""
    who = require(request, "engineer")
    catalogue = life_of(request).catalogue
    made = await run(
        training.with_operating_point, catalogue, product, version, body.threshold, actor(who)
    )
    return {"product": product, "version": made.number, "parent": version}


@router.get("/products/{product}/versions/{version}/heatmap/{image_id}", summary="A heat map")
async def heatmap(
    request: Request, product: str, version: int, image_id: int, threshold: float | None = None
) -> dict:
    """A product image scored by a version: score, verdict, regions and the overlay (PNG)."""
    require(request, READ)
    life = life_of(request)
    path = (await run(Registry(life.catalogue).version, product, version)).path
    image = await run(workshop(request).file_of, image_id)
    models: VersionCache = request.app.state.studio_models
    return await run(models.heatmap, path, image, threshold)


class VersionCache:
    """The last LOADED_VERSIONS versions asked for, loaded, for heat maps."""

    def __init__(self) -> None:
        self.loaded: OrderedDict[Path, Scorer] = OrderedDict()
        self.lock = threading.Lock()

    def scorer(self, path: Path) -> Scorer:
        with self.lock:
            if path not in self.loaded:
                self.loaded[path] = load_scorer(path, device="cpu")
                while len(self.loaded) > LOADED_VERSIONS:
                    self.loaded.popitem(last=False)
            self.loaded.move_to_end(path)
            return self.loaded[path]

    def heatmap(self, model: Path, image: Path, threshold: float | None) -> dict[str, Any]:
        scorer = self.scorer(model)
        item = score_files(scorer, [image], keep_originals=True)[0]
        if item.error is not None:
            raise PadimError(item.error)
        at = float(scorer.threshold if threshold is None else threshold)
        scale = scorer.score_scale.at(at)
        decision = decide_scored(scorer, item, at, scale)
        assert item.anomaly_map is not None and item.size is not None
        geometry = item_geometry(scorer, item)
        amap = geometry.map_to_image(item.anomaly_map, item.size)
        pictures = render_pictures(
            np.asarray(item.original),
            amap,
            at,
            ["overlay"],
            scale,
            decision.regions,
            geometry.uninspected(item.size),
        )
        return {
            "score": decision.score,
            "threshold": at,
            "verdict": decision.verdict,
            "regions": [r.to_dict() for r in decision.regions[: options.MAX_REGIONS]],
            "overlay": png_base64(pictures["overlay"]),
        }
