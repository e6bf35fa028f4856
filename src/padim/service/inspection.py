"""The service's work on one request: decode under limits, queue for a shared forward pass,
decide (`padim.data.decision.decide`) and render the pictures asked for. The routes
(`padim.service.routes`) call it; it knows nothing of HTTP routing."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from padim import options
from padim.data.align import Transform
from padim.data.aligned import photo_geometry
from padim.data.decision import Decision, decide
from padim.data.images import decode_image
from padim.data.pictures import (
    PICTURE_KINDS,
    png_bytes,
    render_pictures,
    to_picture,
)
from padim.deploy.scorers import Scorer, is_finite
from padim.deploy.watch import WebhookSink
from padim.errors import BadImage
from padim.lifecycle.drift import DRIFT
from padim.service.batching import BatchResult
from padim.service.catalogue import Lifecycle
from padim.service.examples import load_examples
from padim.service.metrics import ServiceMetrics
from padim.service.models import Loaded, ModelPool, ModelSources
from padim.service.requests import (
    ApiError,
    Upload,
    too_large,
)
from padim.service.settings import ServeSettings


def png_base64(array: np.ndarray) -> str:
    return base64.b64encode(png_bytes(array, compress_level=1)).decode("ascii")


LOG = logging.getLogger("padim.service")
CLOSE_AFTER = (408, 413, 499)


class Service:
    """The served models plus the metrics, examples and decoding limits of one app."""

    def __init__(
        self,
        models: Scorer | ModelSources,
        settings: ServeSettings,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle  # the catalogue: registry, records, tokens
        self.metrics = ServiceMetrics(CollectorRegistry())
        if isinstance(models, ModelSources):
            self.pool = ModelPool(models, settings, self.metrics)
        else:
            self.pool = ModelPool.of_scorer(models, settings, self.metrics)
        self.examples = load_examples(settings.examples)
        self.started = time.time()
        self.decode_slots = threading.BoundedSemaphore(
            self.settings.max_decodes or os.cpu_count() or 1
        )
        hook = settings.drift_webhook
        self.drift_sink = WebhookSink(hook) if hook else None  # drift alarms are POSTed here

    def watch_drift(self, model: Loaded, score: float) -> None:
        """Feed a result to the model's drift monitor; a change of state (alarm, or its end)
        goes to the log, the metrics, the webhook and (with a catalogue) the audit trail."""
        monitor = model.drift
        if monitor is None:
            return
        changed = monitor.add(score)
        self.metrics.drift.labels(model=model.name).set(monitor.state == DRIFT)
        self.metrics.drift_median.labels(model=model.name).set(monitor.median())
        if not changed:
            return
        event = {
            "event": "drift" if monitor.state == DRIFT else "drift_cleared",
            "model": model.name,
            "version": model.version,
            "model_id": model.scorer.model_id,
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **monitor.to_dict(),
        }
        if monitor.state == DRIFT:
            self.metrics.drift_alarms.labels(model=model.name).inc()
        median, upper = event["window_median"], event["reference_upper"]
        what = f"{event['event']} (window median {median}, held-out 95 % quantile {upper})"
        LOG.warning("model %s: %s", model.name, what)
        if self.drift_sink is not None:
            self.drift_sink.send(event)
        if self.lifecycle is not None:
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, self.lifecycle.note_drift, event)

    def prepare(
        self, scorer: Scorer, upload: Upload, keep_photo: bool = False
    ) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None, Transform | None]:
        """Decode, align (models that align) and preprocess, in a worker thread: model input,
        original size, (for an overlay) the photo and its alignment. At most `max_decodes`
        images are decoded at once, which bounds the service's decoding memory."""
        if len(upload.data) > self.settings.max_upload_bytes:
            raise too_large(
                f"image {upload.name}", len(upload.data), self.settings.max_upload_bytes
            )
        with self.decode_slots:
            image = decode_image(upload.data, upload.name, self.settings.max_pixels)
            photo = np.asarray(image) if keep_photo else None
            size, transform = image.size, None
            if scorer.aligner is not None:
                image, transform = scorer.aligner.align(image)
            return scorer.preprocess(image), size, photo, transform

    async def predict(
        self,
        model: Loaded,
        upload: Upload,
        include: set[str],
        threshold: float,
        min_area: int = 0,
    ) -> dict:
        started = time.perf_counter()
        scorer, batcher = model.scorer, model.batcher
        batcher.expecting += 1  # lets a forming batch wait for this image
        try:
            x, (width, height), photo, transform = await run_in_threadpool(
                self.prepare, scorer, upload, "overlay" in include
            )
        finally:
            batcher.expecting -= 1
        decoded = time.perf_counter()
        result = await batcher.submit(x)
        if not is_finite(result.score, result.anomaly_map):
            raise ApiError(
                500,
                "non_finite_score",
                "the model gave a non-finite score for "
                f"{upload.name}: its model file is damaged; no verdict",
            )
        scored = time.perf_counter()
        decision, pictures = await run_in_threadpool(
            render,
            scorer,
            x,
            result,
            threshold,
            include,
            (width, height),
            photo,
            min_area,
            transform,
        )
        out = result_body(scorer, upload.name, result, decision, width, height)
        if transform is not None:
            out["alignment"] = transform.to_dict()
        out["model"] = model.name
        out["model_version"] = model.version  # the registry version (None: a plain file)
        out.update(pictures)
        done = time.perf_counter()
        out["timings_ms"] = {
            "decode": ms(decoded - started),
            "queue": ms(result.queue_seconds),
            "inference": ms(result.inference_seconds),
            "render": ms(done - scored),
            "total": ms(done - started),
        }
        self.metrics.images.labels(model=model.name, verdict=out["verdict"]).inc()
        self.watch_drift(model, out["score"])
        return out

    async def predict_many(
        self,
        model: Loaded,
        uploads: list[Upload],
        include: set[str],
        threshold: float,
        min_area: int = 0,
    ) -> list[dict]:
        """Every image of a batch request together (they share forward passes); a bad image
        becomes an error entry, the others are still scored."""

        async def one(upload: Upload) -> dict:
            try:
                return await self.predict(model, upload, include, threshold, min_area)
            except (BadImage, ApiError) as exc:
                status, code, message = describe_error(exc)
                self.metrics.errors.labels(endpoint="/v1/predict/batch", code=code).inc()
                return {
                    "filename": upload.name,
                    "error": {"status": status, "code": code, "message": message},
                }

        return list(await asyncio.gather(*(one(u) for u in uploads)))


ASPECT_TOLERANCE = 0.15  # an upload whose aspect ratio differs more is squeezed: say so


def shape_warnings(scorer: Scorer, width: int, height: int) -> list[str]:
    """Why a verdict may not mean much: a photo of another shape than the model's images (a
    bottle photo squeezed into a 400x160 ball-screw model was scored silently)."""
    want, got = scorer.image_aspect, width / height
    if abs(got - want) <= ASPECT_TOLERANCE * want:
        return []
    return [
        f"the image is {width}x{height} (aspect {got:.2f}) but this model's images have aspect "
        f"{want:.2f}: it was stretched to fit; is it the right model?"
    ]


def result_body(
    scorer: Scorer, name: str, r: BatchResult, decision: Decision, width: int, height: int
) -> dict:
    return {
        "filename": name,
        "score": decision.score,
        "normalised_score": decision.normalised_score,
        "threshold": decision.threshold,
        "is_anomalous": decision.is_anomalous,
        "verdict": decision.verdict,
        "reason": decision.reason,
        "model_id": scorer.model_id,
        "image": {"width": width, "height": height, "input_size": scorer.input_size},
        "warnings": shape_warnings(scorer, width, height),
        "batch_size": r.batch_size,
    }


def render(
    scorer: Scorer,
    x: np.ndarray,
    result: BatchResult,
    threshold: float,
    include: set[str],
    image_wh: tuple[int, int],
    photo: np.ndarray | None = None,
    min_area: int = 0,
    transform: Transform | None = None,
) -> tuple[Decision, dict]:
    """The decision (`padim.data.decision.decide`: verdict, normalised score, defect regions
    at the uploaded image's size) and the pictures asked for, as base64 PNGs: heat map, mask
    and overlay at the uploaded image's size, coloured on the normalised score, the model
    input as it is (aligned onto the reference, for models that align); and the raw map at
    the model input (float32 little-endian). Maps and regions go back onto the upload through
    the inverse of its alignment; what the reference does not cover is hatched."""
    amap = result.anomaly_map
    scale = scorer.score_scale.at(threshold)
    geometry = photo_geometry(scorer.geometry, scorer.aligner, transform)
    decision = decide(result.score, amap, threshold, scale, geometry, image_wh, min_area, transform)
    regions = decision.regions
    out: dict[str, Any] = {
        "n_regions": len(regions),
        "regions": [r.to_dict() for r in regions[: options.MAX_REGIONS]],
    }
    kinds = [name for name in PICTURE_KINDS if name in include and name != "input"]
    arrays: dict[str, np.ndarray] = {}
    if kinds:
        native = geometry.map_to_image(amap, image_wh)
        hidden = geometry.uninspected(image_wh)
        canvas = photo if photo is not None else np.zeros((1, 1, 3), np.uint8)
        arrays = render_pictures(canvas, native, threshold, kinds, scale, regions, hidden)
    if "input" in include:
        arrays["input"] = to_picture(x)
    if arrays:
        out["pictures"] = {name: png_base64(a) for name, a in arrays.items()}
        out["colour_scale"] = scale.to_dict()
    if "map" in include:
        h, w = amap.shape
        out["anomaly_map"] = {
            "width": w,
            "height": h,
            "dtype": "float32",
            "byte_order": "little",
            "data": base64.b64encode(amap.astype("<f4").tobytes()).decode("ascii"),
        }
    return decision, out


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def describe_error(exc: Exception) -> tuple[int, str, str]:
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, BadImage):
        return 400, exc.code, str(exc)
    return 500, "internal", "internal error"


# ----------------------------------------------------------------------------- the app
