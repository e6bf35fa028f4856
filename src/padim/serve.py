"""`padim serve`: the inspection service (FastAPI app + uvicorn).

POST /v1/predict and /v1/predict/batch score uploaded images (dynamic micro-batching across
concurrent requests); GET /v1/health, /v1/model, /v1/examples and /metrics (Prometheus) describe
the service; GET / is an offline web page. Every error is a JSON body
`{"error": {"status", "code", "message"}}` with a 4xx status for client mistakes.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
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
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from padim import __version__
from padim.batching import BatchResult, MicroBatcher
from padim.errors import BadImage, PadimError
from padim.images import decode_image, list_images
from padim.runtime import Scorer
from padim.serve_metrics import MetricsMiddleware, ServiceMetrics
from padim.viz import colour_scale, png_bytes, render_pictures

MB = 1 << 20
PICTURES = ("heatmap", "mask", "overlay", "input")
INCLUDES = (*PICTURES, "map")
RAW_TYPES = ("application/octet-stream",)
MAX_EXAMPLES = 12


@dataclass
class ServeSettings:
    """Limits and batching of one service; all of it is on the `padim serve` command line."""

    max_upload_bytes: int = 20 * MB  # one image
    max_request_bytes: int = 100 * MB  # one batch request
    max_batch_images: int = 32  # images in one batch request
    max_pixels: int = 50_000_000  # declared pixel count refused before decoding
    batching: bool = True  # dynamic micro-batching across requests
    max_batch: int = 16  # images per forward pass
    max_wait_ms: float = 5.0  # how long a batch waits for images still being decoded
    examples: Sequence[Path] = field(default_factory=tuple)  # files/folders; () = demo images


class ApiError(Exception):
    """A client mistake: becomes a JSON error with this status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Upload:
    name: str
    data: bytes


@dataclass
class Example:
    name: str
    data: bytes
    media_type: str


# ----------------------------------------------------------------------------- reading requests


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(what, int(declared), limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(what, total, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, size: int, limit: int) -> ApiError:
    return ApiError(413, "too_large", f"{what} is larger than the limit of {limit / MB:g} MB "
                    f"({size / MB:.1f} MB or more)")


def _replay(request: Request, body: bytes) -> Request:
    """A copy of `request` whose body is `body` (already read under a size limit)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(request.scope, receive)


async def read_uploads(request: Request, settings: ServeSettings, batch: bool) -> list[Upload]:
    """Images of a request: multipart files (any field; `file` by convention) or a raw body
    with an image/* or application/octet-stream content type."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        limit = settings.max_request_bytes if batch else settings.max_upload_bytes + MB
        body = await read_body(request, limit, "the request")
        max_files = settings.max_batch_images if batch else 1
        try:
            form = await _replay(request, body).form(max_files=max_files,
                                                     max_fields=max_files + 8)
        except StarletteHTTPException as exc:  # malformed multipart, too many parts
            hint = "" if batch else " (several images: use /v1/predict/batch)"
            raise ApiError(400, "bad_multipart", f"{exc.detail}{hint}") from None
        try:
            uploads = [Upload(v.filename or k, await v.read())
                       for k, v in form.multi_items() if isinstance(v, UploadFile)]
        finally:
            await form.close()
        if not uploads:
            raise ApiError(400, "no_file", "no image in the form: send it in the field 'file' "
                           "(multipart/form-data)")
        return uploads
    if media.startswith("image/") or media in RAW_TYPES:
        name = request.query_params.get("filename") or "body"
        return [Upload(name, await read_body(request, settings.max_upload_bytes, "the image"))]
    shown = media or "none"
    raise ApiError(415, "unsupported_media_type",
                   f"content type {shown} is not accepted: send multipart/form-data with the "
                   "image in the field 'file', or the raw image bytes as image/* or "
                   "application/octet-stream")


def parse_include(text: str) -> set[str]:
    wanted = {part.strip().lower() for part in text.split(",") if part.strip()}
    unknown = wanted - set(INCLUDES)
    if unknown:
        raise ApiError(422, "bad_include", f"unknown include {', '.join(sorted(unknown))}: "
                       f"choose from {', '.join(INCLUDES)}")
    return wanted


def parse_threshold(text: str | None, default: float) -> float:
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ApiError(422, "bad_threshold", f"threshold must be a finite number, got {text!r}")
    return value


# ----------------------------------------------------------------------------- the service


def png_base64(array: np.ndarray) -> str:
    return base64.b64encode(png_bytes(array, compress_level=1)).decode("ascii")


class Service:
    """The shared, read-only model plus the batcher, metrics and examples of one app."""

    def __init__(self, scorer: Scorer, settings: ServeSettings) -> None:
        self.scorer = scorer
        self.settings = settings
        self.metrics = ServiceMetrics(CollectorRegistry(), scorer.describe())
        self.batcher = MicroBatcher(
            scorer.score_batch, settings.max_batch if settings.batching else 1,
            settings.max_wait_ms if settings.batching else 0.0, self.metrics.observe_batch)
        self.metrics.queue_depth.set_function(lambda: self.batcher.pending)
        self.examples = load_examples(settings.examples)
        self.started = time.time()

    def prepare(self, upload: Upload) -> tuple[np.ndarray, tuple[int, int]]:
        """Decode and preprocess (in a worker thread): model input and original size."""
        if len(upload.data) > self.settings.max_upload_bytes:
            raise _too_large(f"image {upload.name}", len(upload.data),
                             self.settings.max_upload_bytes)
        image = decode_image(upload.data, upload.name, self.settings.max_pixels)
        return self.scorer.preprocess(image), image.size

    async def predict(self, upload: Upload, include: set[str], threshold: float) -> dict:
        started = time.perf_counter()
        self.batcher.expecting += 1  # lets a forming batch wait for this image
        try:
            x, (width, height) = await run_in_threadpool(self.prepare, upload)
        finally:
            self.batcher.expecting -= 1
        decoded = time.perf_counter()
        result = await self.batcher.submit(x)
        scored = time.perf_counter()
        out = self._result(upload.name, result, threshold, width, height)
        if include:
            out.update(await run_in_threadpool(self.render, x, result.anomaly_map, threshold,
                                               include))
        done = time.perf_counter()
        out["timings_ms"] = {
            "decode": _ms(decoded - started), "queue": _ms(result.queue_seconds),
            "inference": _ms(result.inference_seconds), "render": _ms(done - scored),
            "total": _ms(done - started),
        }
        self.metrics.images.labels(verdict=out["verdict"]).inc()
        return out

    def _result(self, name: str, r: BatchResult, threshold: float, width: int,
                height: int) -> dict:
        anomalous = r.score > threshold
        return {
            "filename": name, "score": r.score, "threshold": threshold,
            "is_anomalous": anomalous, "verdict": "anomalous" if anomalous else "good",
            "model_id": self.scorer.model_id,
            "image": {"width": width, "height": height, "input_size": self.scorer.input_size},
            "batch_size": r.batch_size,
        }

    def render(self, x: np.ndarray, amap: np.ndarray, threshold: float,
               include: set[str]) -> dict:
        """The pictures asked for, as base64 PNGs, and the raw map (float32 little-endian)."""
        out: dict[str, Any] = {}
        kinds = [name for name in PICTURES if name in include]
        if kinds:  # colours scaled by the model's threshold: they mean the same across requests
            arrays = render_pictures(x, amap, threshold, kinds, self.scorer.threshold)
            out["pictures"] = {name: png_base64(a) for name, a in arrays.items()}
            out["colour_scale"] = list(colour_scale(self.scorer.threshold))
        if "map" in include:
            h, w = amap.shape
            out["anomaly_map"] = {
                "width": w, "height": h, "dtype": "float32", "byte_order": "little",
                "data": base64.b64encode(amap.astype("<f4").tobytes()).decode("ascii"),
            }
        return out

    async def predict_many(self, uploads: list[Upload], include: set[str],
                           threshold: float) -> list[dict]:
        """Every image of a batch request together (they share forward passes); a bad image
        becomes an error entry, the others are still scored."""
        async def one(upload: Upload) -> dict:
            try:
                return await self.predict(upload, include, threshold)
            except (BadImage, ApiError) as exc:
                status, code, message = _describe(exc)
                self.metrics.errors.labels(endpoint="/v1/predict/batch", code=code).inc()
                return {"filename": upload.name,
                        "error": {"status": status, "code": code, "message": message}}

        return list(await asyncio.gather(*(one(u) for u in uploads)))


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _describe(exc: Exception) -> tuple[int, str, str]:
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, BadImage):
        return 400, exc.code, str(exc)
    return 500, "internal", "internal error"


# ----------------------------------------------------------------------------- examples


def _media_type(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return {"jpg": "image/jpeg", "tif": "image/tiff"}.get(suffix, f"image/{suffix}")


def load_examples(sources: Sequence[Path]) -> list[Example]:
    """Example images for the page: the given files / folders (folders: their images, and the
    images one level down, named `<subfolder>/<file>`), or a few built-in demo images."""
    if not sources:
        return demo_examples()
    files: list[tuple[str, Path]] = []
    for source in map(Path, sources):
        if source.is_file():
            files.append((source.name, source))
        elif source.is_dir():
            files += [(p.name, p) for p in list_images(source)]
            for sub in sorted(d for d in source.iterdir() if d.is_dir()):
                files += [(f"{sub.name}/{p.name}", p) for p in list_images(sub)]
        else:
            raise PadimError(f"examples not found: {source}")
    if not files:
        raise PadimError("no example images found in " + ", ".join(map(str, sources)))
    return [Example(name, path.read_bytes(), _media_type(path))
            for name, path in _spread(files, MAX_EXAMPLES)]


def _spread(items: list, n: int) -> list:
    """At most n items, evenly spread over the list (so every subfolder shows up)."""
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def demo_examples() -> list[Example]:
    """The demo set's images; none where scikit-image (their source) is not installed."""
    from padim.demo import example_images

    try:
        arrays = example_images()
    except ImportError:
        return []
    return [Example(name, png_bytes(array), "image/png") for name, array in arrays]


# ----------------------------------------------------------------------------- the app


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message}},
                        status_code=status)


def _web_root() -> Path:
    return Path(str(resources.files("padim") / "web"))


def create_app(scorer: Scorer, settings: ServeSettings | None = None) -> FastAPI:
    """The ASGI app serving one model (shared read-only by every request)."""
    service = Service(scorer, settings or ServeSettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()

    app = FastAPI(title="padim inspection service", version=__version__, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        service.metrics.errors.labels(endpoint=_endpoint(request), code=exc.code).inc()
        return _error(exc.status, exc.code, exc.message)

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
        service.metrics.errors.labels(endpoint=_endpoint(request), code="internal").inc()
        return _error(500, "internal", f"internal error: {type(exc).__name__}: {exc}")

    @app.post("/v1/predict", summary="Score one image")
    async def predict(request: Request) -> dict:
        """One image as multipart (field `file`) or raw bytes. Query: `include` (comma list of
        heatmap, mask, overlay, input, map) and `threshold` (overrides the model's)."""
        include = parse_include(request.query_params.get("include", ""))
        threshold = parse_threshold(request.query_params.get("threshold"), scorer.threshold)
        uploads = await read_uploads(request, service.settings, batch=False)  # one at most
        return await service.predict(uploads[0], include, threshold)

    @app.post("/v1/predict/batch", summary="Score several images")
    async def predict_batch(request: Request) -> dict:
        """Several images as multipart files (any field names, e.g. `files`); results in the
        same order; an unreadable image gets an `error` entry instead of failing the batch."""
        include = parse_include(request.query_params.get("include", ""))
        threshold = parse_threshold(request.query_params.get("threshold"), scorer.threshold)
        if request.headers.get("content-type", "").split(";")[0].strip() != "multipart/form-data":
            raise ApiError(415, "unsupported_media_type",
                           "send the images as multipart/form-data files")
        started = time.perf_counter()
        uploads = await read_uploads(request, service.settings, batch=True)
        results = await service.predict_many(uploads, include, threshold)
        return {"model_id": scorer.model_id, "threshold": threshold, "count": len(results),
                "errors": sum("error" in r for r in results), "results": results,
                "timings_ms": {"total": _ms(time.perf_counter() - started)}}

    @app.get("/v1/health", summary="Liveness and model state")
    async def health() -> dict:
        return {"status": "ok", "model_loaded": True, "model_id": scorer.model_id,
                "uptime_s": round(time.time() - service.started, 1),
                "queue_depth": service.batcher.pending}

    @app.get("/v1/model", summary="The served model")
    async def model_info() -> dict:
        return {**scorer.describe(), "batching": service.settings.batching,
                "max_batch": service.batcher.max_batch,
                "max_upload_bytes": service.settings.max_upload_bytes}

    @app.get("/v1/examples", summary="Example images for the web page")
    async def examples() -> list[dict]:
        return [{"name": e.name, "url": f"/v1/examples/{i}"}
                for i, e in enumerate(service.examples)]

    @app.get("/v1/examples/{index}", summary="One example image")
    async def example(index: int) -> Response:
        if not 0 <= index < len(service.examples):
            raise ApiError(404, "not_found", f"no example {index}")
        e = service.examples[index]
        return Response(e.data, media_type=e.media_type,
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(service.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

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


def _endpoint(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")


# ----------------------------------------------------------------------------- running


ENV_MODEL = "PADIM_SERVE_MODEL"
ENV_SETTINGS = "PADIM_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn: each worker process loads the model itself."""
    import json

    from padim.runtime import load_scorer

    raw = json.loads(os.environ[ENV_SETTINGS])
    raw["examples"] = [Path(p) for p in raw.get("examples", [])]
    device = raw.pop("device", "auto")
    threads = raw.pop("threads", None)
    return create_app(load_scorer(os.environ[ENV_MODEL], device, threads),
                      ServeSettings(**raw))


def run_server(model: Path, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
               workers: int = 1, device: str = "auto", log_level: str = "info",
               threads: int | None = None) -> None:
    """Load the model (failing before start-up if it cannot), then serve it with uvicorn."""
    import dataclasses
    import json

    import uvicorn

    from padim.runtime import load_scorer

    scorer = load_scorer(model, device, threads)  # fail fast, clearly, in this process
    if workers == 1:
        app = create_app(scorer, settings)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
        return
    load_examples(settings.examples)
    del scorer
    raw = dataclasses.asdict(settings)
    raw["examples"] = [str(p) for p in settings.examples]
    raw["device"] = device
    raw["threads"] = threads  # worker processes start afresh: pass the thread count on
    os.environ[ENV_MODEL] = str(model)
    os.environ[ENV_SETTINGS] = json.dumps(raw)
    uvicorn.run("padim.serve:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level=log_level)
