"""The service's HTTP routes: scoring (one model or a named one, one image or a batch), the
models, health, examples, metrics and the page. Each route finds the app's `Service` in
`request.app.state.service`; the work is `padim.service.inspection`'s."""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Scope

from padim.deploy.scorers import Scorer, resolve_threshold
from padim.errors import PadimError
from padim.service.access import READ, require
from padim.service.inspection import Service, ms
from padim.service.models import Loaded
from padim.service.requests import (
    ApiError,
    parse_include,
    parse_min_area,
    parse_threshold,
    query,
    read_uploads,
)

router = APIRouter()
LOG = logging.getLogger("padim.service")

# No third-party origin at all: the page must work on an isolated line PC.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'",
    "Cache-Control": "no-cache",
}


class PageFiles(StaticFiles):
    """The page's files, each with the page's Content-Security-Policy (index.html is also
    reachable as /static/index.html)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = PAGE_HEADERS["Content-Security-Policy"]
        return response


def web_root() -> Path:
    return Path(str(resources.files("padim.service") / "web"))


def service_of(request: Request) -> Service:
    return request.app.state.service


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


async def record(request: Request, model: Loaded, results: list[dict], uploads: list) -> None:
    """Record the verdicts (when the service records): committed before the answer goes out,
    so an acknowledged result is never lost; a catalogue that cannot take it fails the request."""
    life = service_of(request).lifecycle
    if life is None or not life.record:
        return
    try:
        await life.record_results(model.name, model.version, results, uploads)
    except Exception as exc:
        LOG.error("recording %d result(s) of %s failed: %s", len(results), model.name, exc)
        raise ApiError(503, "not_recorded", "the result could not be recorded; try again") from None


async def predict_one(request: Request, name: str) -> dict:
    require(request, "operator")
    service = service_of(request)
    include = parse_include(query(request, "include") or "")
    min_area = parse_min_area(query(request, "min_area"))
    service.pool.check(name)
    # the body first: a slow upload must not hold a model that is being replaced
    uploads = await read_uploads(request, service.settings, batch=False)  # one at most
    async with service.pool.use(name) as model:
        threshold = request_threshold(request, model.scorer)
        result = await service.predict(model, uploads[0], include, threshold, min_area)
        await record(request, model, [result], uploads)
        return result


async def predict_batch(request: Request, name: str) -> dict:
    require(request, "operator")
    service = service_of(request)
    include = parse_include(query(request, "include") or "")
    min_area = parse_min_area(query(request, "min_area"))
    if request.headers.get("content-type", "").split(";")[0].strip() != "multipart/form-data":
        raise ApiError(
            415, "unsupported_media_type", "send the images as multipart/form-data files"
        )
    service.pool.check(name)
    started = time.perf_counter()
    uploads = await read_uploads(request, service.settings, batch=True)
    async with service.pool.use(name) as model:
        threshold = request_threshold(request, model.scorer)
        results = await service.predict_many(model, uploads, include, threshold, min_area)
        await record(request, model, results, uploads)
        return {
            "model": model.name,
            "model_id": model.scorer.model_id,
            "threshold": threshold,
            "count": len(results),
            "errors": sum("error" in r for r in results),
            "results": results,
            "timings_ms": {"total": ms(time.perf_counter() - started)},
        }


async def describe_model(request: Request, name: str) -> dict:
    require(request, READ)
    service = service_of(request)
    async with service.pool.use(name) as model:
        return {
            "name": model.name,
            "version": model.version,
            **model.scorer.describe(),
            "batching": service.settings.batching,
            "max_batch": model.batcher.max_batch,
            "max_upload_bytes": service.settings.max_upload_bytes,
        }


@router.post("/v1/predict", summary="Score one image (a service with one model)")
async def predict(request: Request) -> dict:
    """One image as multipart (field `file`) or raw bytes. Query: `include` (comma list of
    heatmap, mask, overlay, input, map), `threshold` (overrides the model's) or
    `operating_point` (a stored one, by name), `min_area` (smallest region, pixels).
    With several models, use /v1/models/{name}/predict."""
    return await predict_one(request, service_of(request).pool.only())


@router.post("/v1/predict/batch", summary="Score several images (a service with one model)")
async def batch(request: Request) -> dict:
    """Several images as multipart files (any field names, e.g. `files`); results in the
    same order; an unreadable image gets an `error` entry instead of failing the batch."""
    return await predict_batch(request, service_of(request).pool.only())


@router.post("/v1/models/{name}/predict", summary="Score one image with model `name`")
async def predict_named(request: Request, name: str) -> dict:
    """As /v1/predict, with the model named in the path (its own threshold and
    operating points)."""
    return await predict_one(request, name)


@router.post("/v1/models/{name}/predict/batch", summary="Score several images with `name`")
async def batch_named(request: Request, name: str) -> dict:
    """As /v1/predict/batch, with the model named in the path."""
    return await predict_batch(request, name)


@router.get("/v1/models", summary="The models this service serves")
async def list_models(request: Request) -> dict:
    require(request, READ)
    service = service_of(request)
    return {
        "models": service.pool.listing(),
        "max_loaded": service.settings.max_loaded,
        "reload_interval_s": service.settings.reload_s if service.pool.sources else None,
    }


@router.get("/v1/models/{name}", summary="One served model (loads it)")
async def model_named(request: Request, name: str) -> dict:
    return await describe_model(request, name)


@router.get("/v1/health", summary="Liveness and model state")
async def health(request: Request) -> dict:
    service = service_of(request)
    pool = service.pool
    loaded = list(pool.loaded.values())
    return {
        "status": "ok",
        "models": len(pool.names),
        "loaded": [m.name for m in loaded],
        "model_loaded": bool(loaded),
        "model_id": loaded[0].scorer.model_id if len(pool.names) == 1 and loaded else None,
        "uptime_s": round(time.time() - service.started, 1),
        "queue_depth": sum(m.batcher.pending for m in loaded),
        "drift_alarm": any(m.drift is not None and m.drift.state == "drift" for m in loaded),
        "drift": {m.name: m.drift.to_dict() for m in loaded if m.drift is not None},
    }


@router.get("/v1/model", summary="The served model (a service with one model)")
async def model_info(request: Request) -> dict:
    return await describe_model(request, service_of(request).pool.only())


@router.get("/v1/examples", summary="Example images for the web page")
async def examples(request: Request) -> list[dict]:
    found = service_of(request).examples
    return [{"name": e.name, "url": f"/v1/examples/{i}"} for i, e in enumerate(found)]


@router.get("/v1/examples/{index}", summary="One example image")
async def example(request: Request, index: int) -> Response:
    found = service_of(request).examples
    if not 0 <= index < len(found):
        raise ApiError(404, "not_found", f"no example {index}")
    e = found[index]
    return Response(e.data, media_type=e.media_type, headers={"Cache-Control": "max-age=3600"})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    require(request, READ)
    registry = service_of(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(web_root() / "index.html", headers=PAGE_HEADERS)
