"""The inspection service's FastAPI app: routes, the shared model, batching and errors.

POST /v1/models/{name}/predict (and /batch) score uploaded images with a named model (dynamic
micro-batching across concurrent requests); /v1/predict, /v1/predict/batch and /v1/model are the
same for a service with one model. GET /v1/models, /v1/health, /v1/examples and /metrics
(Prometheus) describe the service; GET / is an offline web page. Every error is a JSON body
`{"error": {"status", "code", "message"}}` with a 4xx status for client mistakes.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from padim import __version__, options
from padim.data.decision import Decision, decide
from padim.data.images import decode_image
from padim.data.pictures import (
    PICTURE_KINDS,
    png_bytes,
    render_pictures,
    to_picture,
)
from padim.deploy.scorers import Scorer, is_finite, resolve_threshold
from padim.errors import BadImage, PadimError
from padim.service.batching import BatchResult
from padim.service.examples import load_examples
from padim.service.metrics import MetricsMiddleware, ServiceMetrics
from padim.service.models import Loaded, ModelPool, ModelSources
from padim.service.requests import (
    ApiError,
    Upload,
    parse_include,
    parse_min_area,
    parse_threshold,
    query,
    read_uploads,
    too_large,
)
from padim.service.settings import ServeSettings

# ----------------------------------------------------------------------------- the service


def png_base64(array: np.ndarray) -> str:
    return base64.b64encode(png_bytes(array, compress_level=1)).decode("ascii")


LOG = logging.getLogger("padim.service")
CLOSE_AFTER = (408, 413, 499)


class Service:
    """The served models plus the metrics, examples and decoding limits of one app."""

    def __init__(self, models: Scorer | ModelSources, settings: ServeSettings) -> None:
        self.settings = settings
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

    def prepare(
        self, scorer: Scorer, upload: Upload, keep_photo: bool = False
    ) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
        """Decode and preprocess (in a worker thread): model input, original size and (for an
        overlay) the photo. At most `max_decodes` images are decoded at once, which bounds the
        service's decoding memory."""
        if len(upload.data) > self.settings.max_upload_bytes:
            raise too_large(
                f"image {upload.name}", len(upload.data), self.settings.max_upload_bytes
            )
        with self.decode_slots:
            image = decode_image(upload.data, upload.name, self.settings.max_pixels)
            photo = np.asarray(image) if keep_photo else None
            return scorer.preprocess(image), image.size, photo

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
            x, (width, height), photo = await run_in_threadpool(
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
            render, scorer, x, result, threshold, include, (width, height), photo, min_area
        )
        out = _result(scorer, upload.name, result, decision, width, height)
        out["model"] = model.name
        out.update(pictures)
        done = time.perf_counter()
        out["timings_ms"] = {
            "decode": _ms(decoded - started),
            "queue": _ms(result.queue_seconds),
            "inference": _ms(result.inference_seconds),
            "render": _ms(done - scored),
            "total": _ms(done - started),
        }
        self.metrics.images.labels(model=model.name, verdict=out["verdict"]).inc()
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
                status, code, message = _describe(exc)
                self.metrics.errors.labels(endpoint="/v1/predict/batch", code=code).inc()
                return {
                    "filename": upload.name,
                    "error": {"status": status, "code": code, "message": message},
                }

        return list(await asyncio.gather(*(one(u) for u in uploads)))


def _result(
    scorer: Scorer, name: str, r: BatchResult, decision: Decision, width: int, height: int
) -> dict:
    return {
        "filename": name,
        "score": decision.score,
        "normalised_score": decision.normalised_score,
        "threshold": decision.threshold,
        "is_anomalous": decision.is_anomalous,
        "verdict": "anomalous" if decision.is_anomalous else "good",
        "model_id": scorer.model_id,
        "image": {"width": width, "height": height, "input_size": scorer.input_size},
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
) -> tuple[Decision, dict]:
    """The decision (`padim.data.decision.decide`: verdict, normalised score, defect regions
    at the uploaded image's size) and the pictures asked for, as base64 PNGs: heat map, mask
    and overlay at the uploaded image's size, coloured on the normalised score, the model
    input as it is; and the raw map at the model input (float32 little-endian)."""
    amap = result.anomaly_map
    scale = scorer.score_scale.at(threshold)
    decision = decide(result.score, amap, threshold, scale, scorer.geometry, image_wh, min_area)
    regions = decision.regions
    out: dict[str, Any] = {
        "n_regions": len(regions),
        "regions": [r.to_dict() for r in regions[: options.MAX_REGIONS]],
    }
    kinds = [name for name in PICTURE_KINDS if name in include and name != "input"]
    arrays: dict[str, np.ndarray] = {}
    if kinds:
        native = scorer.geometry.map_to_image(amap, image_wh)
        canvas = photo if photo is not None else np.zeros((1, 1, 3), np.uint8)
        arrays = render_pictures(canvas, native, threshold, kinds, scale, regions)
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


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _describe(exc: Exception) -> tuple[int, str, str]:
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, BadImage):
        return 400, exc.code, str(exc)
    return 500, "internal", "internal error"


# ----------------------------------------------------------------------------- the app


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"status": status, "code": code, "message": message}}, status_code=status
    )


def _web_root() -> Path:
    return Path(str(resources.files("padim.service") / "web"))


def create_app(models: Scorer | ModelSources, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving one in-memory model, or the model files of `ModelSources` (a
    folder or several files, loaded on first use and reloaded when replaced)."""
    service = Service(models, settings or ServeSettings())
    pool = service.pool

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await pool.start()
        try:
            yield
        finally:
            await pool.stop()

    app = FastAPI(
        title="padim inspection service",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        service.metrics.errors.labels(endpoint=_endpoint(request), code=exc.code).inc()
        if exc.status == 499:  # nobody is listening for the answer: one log line is all
            LOG.info("%s %s: %s", request.method, request.url.path, exc.message)
        response = _error(exc.status, exc.code, exc.message)
        if exc.status in CLOSE_AFTER:  # the rest of the body was not read: end the connection
            response.headers["connection"] = "close"
        return response

    @app.exception_handler(BadImage)
    async def bad_image(request: Request, exc: BadImage) -> JSONResponse:
        service.metrics.errors.labels(endpoint=_endpoint(request), code=exc.code).inc()
        return _error(400, exc.code, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        service.metrics.errors.labels(endpoint=_endpoint(request), code=code).inc()
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        service.metrics.errors.labels(endpoint=_endpoint(request), code="invalid").inc()
        return _error(422, "invalid", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        """The details go to the server's log, never to the client."""
        service.metrics.errors.labels(endpoint=_endpoint(request), code="internal").inc()
        LOG.error(
            "%s %s failed: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return _error(500, "internal", "internal error (details are in the server's log)")

    async def predict_one(request: Request, name: str) -> dict:
        include = parse_include(query(request, "include") or "")
        min_area = parse_min_area(query(request, "min_area"))
        pool.check(name)
        # the body first: a slow upload must not hold a model that is being replaced
        uploads = await read_uploads(request, service.settings, batch=False)  # one at most
        async with pool.use(name) as model:
            threshold = request_threshold(request, model.scorer)
            return await service.predict(model, uploads[0], include, threshold, min_area)

    async def predict_batch(request: Request, name: str) -> dict:
        include = parse_include(query(request, "include") or "")
        min_area = parse_min_area(query(request, "min_area"))
        if request.headers.get("content-type", "").split(";")[0].strip() != "multipart/form-data":
            raise ApiError(
                415, "unsupported_media_type", "send the images as multipart/form-data files"
            )
        pool.check(name)
        started = time.perf_counter()
        uploads = await read_uploads(request, service.settings, batch=True)
        async with pool.use(name) as model:
            threshold = request_threshold(request, model.scorer)
            results = await service.predict_many(model, uploads, include, threshold, min_area)
            return {
                "model": model.name,
                "model_id": model.scorer.model_id,
                "threshold": threshold,
                "count": len(results),
                "errors": sum("error" in r for r in results),
                "results": results,
                "timings_ms": {"total": _ms(time.perf_counter() - started)},
            }

    async def describe_model(name: str) -> dict:
        async with pool.use(name) as model:
            return {
                "name": model.name,
                **model.scorer.describe(),
                "batching": service.settings.batching,
                "max_batch": model.batcher.max_batch,
                "max_upload_bytes": service.settings.max_upload_bytes,
            }

    @app.post("/v1/predict", summary="Score one image (a service with one model)")
    async def predict(request: Request) -> dict:
        """One image as multipart (field `file`) or raw bytes. Query: `include` (comma list of
        heatmap, mask, overlay, input, map), `threshold` (overrides the model's) or
        `operating_point` (a stored one, by name), `min_area` (smallest region, pixels).
        With several models, use /v1/models/{name}/predict."""
        return await predict_one(request, pool.only())

    @app.post("/v1/predict/batch", summary="Score several images (a service with one model)")
    async def batch(request: Request) -> dict:
        """Several images as multipart files (any field names, e.g. `files`); results in the
        same order; an unreadable image gets an `error` entry instead of failing the batch."""
        return await predict_batch(request, pool.only())

    @app.post("/v1/models/{name}/predict", summary="Score one image with model `name`")
    async def predict_named(request: Request, name: str) -> dict:
        """As /v1/predict, with the model named in the path (its own threshold and
        operating points)."""
        return await predict_one(request, name)

    @app.post("/v1/models/{name}/predict/batch", summary="Score several images with `name`")
    async def batch_named(request: Request, name: str) -> dict:
        """As /v1/predict/batch, with the model named in the path."""
        return await predict_batch(request, name)

    @app.get("/v1/models", summary="The models this service serves")
    async def list_models() -> dict:
        return {
            "models": pool.listing(),
            "max_loaded": service.settings.max_loaded,
            "reload_interval_s": service.settings.reload_s if pool.sources else None,
        }

    @app.get("/v1/models/{name}", summary="One served model (loads it)")
    async def model_named(name: str) -> dict:
        return await describe_model(name)

    @app.get("/v1/health", summary="Liveness and model state")
    async def health() -> dict:
        loaded = list(pool.loaded.values())
        return {
            "status": "ok",
            "models": len(pool.names),
            "loaded": [m.name for m in loaded],
            "model_loaded": bool(loaded),
            "model_id": loaded[0].scorer.model_id if len(pool.names) == 1 and loaded else None,
            "uptime_s": round(time.time() - service.started, 1),
            "queue_depth": sum(m.batcher.pending for m in loaded),
        }

    @app.get("/v1/model", summary="The served model (a service with one model)")
    async def model_info() -> dict:
        return await describe_model(pool.only())

    @app.get("/v1/examples", summary="Example images for the web page")
    async def examples() -> list[dict]:
        return [
            {"name": e.name, "url": f"/v1/examples/{i}"} for i, e in enumerate(service.examples)
        ]

    @app.get("/v1/examples/{index}", summary="One example image")
    async def example(index: int) -> Response:
        if not 0 <= index < len(service.examples):
            raise ApiError(404, "not_found", f"no example {index}")
        e = service.examples[index]
        return Response(e.data, media_type=e.media_type, headers={"Cache-Control": "max-age=3600"})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(_web_root() / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=_web_root()), name="static")
    return app


# No third-party origin at all: the page must work on an isolated line PC.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'",
    "Cache-Control": "no-cache",
}


def request_threshold(request: Request, scorer: Scorer) -> float:
    """`threshold` or `operating_point` from the query (not both), else the model's."""
    text, name = query(request, "threshold"), query(request, "operating_point")
    if name is None:
        return parse_threshold(text, scorer.threshold)
    if text is not None:
        raise ApiError(422, "bad_query", "give either threshold or operating_point, not both")
    try:
        return resolve_threshold(scorer, None, name)
    except PadimError as exc:
        raise ApiError(422, "bad_operating_point", str(exc)) from None


def _endpoint(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")
