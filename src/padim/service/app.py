"""The inspection service's FastAPI app: routes, the shared model, batching and errors.

POST /v1/models/{name}/predict (and /batch) score uploaded images with a named model (dynamic
micro-batching across concurrent requests); /v1/predict, /v1/predict/batch and /v1/model are the
same for a service with one model. GET /v1/models, /v1/health, /v1/examples and /metrics
(Prometheus) describe the service; GET / is an offline web page. With a catalogue, the registry,
records and tokens routes too (`padim.service.catalogue_routes`), and bearer tokens with roles
(`padim.service.access`). Every error is a JSON body `{"error": {"status", "code", "message"}}`
with a 4xx status for client mistakes.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from padim import __version__
from padim.deploy.scorers import Scorer
from padim.errors import BadImage
from padim.service.catalogue import Lifecycle
from padim.service.catalogue_routes import router as catalogue_router
from padim.service.inspection import Service
from padim.service.jobs import JobBoard
from padim.service.metrics import MetricsMiddleware
from padim.service.models import ModelSources
from padim.service.requests import ApiError
from padim.service.routes import PageFiles, router, web_root
from padim.service.settings import ServeSettings
from padim.service.studio_routes import VersionCache
from padim.service.studio_routes import router as studio_router

LOG = logging.getLogger("padim.service")
CLOSE_AFTER = (408, 413, 499)  # statuses sent before the body was read: close the connection


def create_app(
    models: Scorer | ModelSources,
    settings: ServeSettings | None = None,
    lifecycle: Lifecycle | None = None,
) -> FastAPI:
    """The ASGI app serving one in-memory model, or the model files of `ModelSources` (a
    folder or several files, or a registry's alias: loaded on first use and reloaded when
    replaced); with a `lifecycle`, also the registry, records and tokens of its catalogue."""
    service = Service(models, settings or ServeSettings(), lifecycle)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.pool.start()
        try:
            yield
        finally:
            await service.pool.stop()
            if service.drift_sink is not None:
                service.drift_sink.close(timeout=5.0)

    app = FastAPI(
        title="padim inspection service",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    add_error_handlers(app, service)
    app.include_router(router)
    if lifecycle is not None:
        app.include_router(catalogue_router)
        app.include_router(studio_router)
        app.state.jobs = JobBoard()
        app.state.studio_models = VersionCache()
        app.state.near_duplicates = {}  # product -> (its images' key, the groups)
    app.mount("/static", PageFiles(directory=web_root()), name="static")
    return app


def add_error_handlers(app: FastAPI, service: Service) -> None:
    """Every error as `{"error": {"status", "code", "message"}}`, counted in the metrics;
    internal details go to the server's log, never to the client."""

    def count(request: Request, code: str) -> None:
        service.metrics.errors.labels(endpoint=_endpoint(request), code=code).inc()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        count(request, exc.code)
        if exc.status == 499:  # nobody is listening for the answer: one log line is all
            LOG.info("%s %s: %s", request.method, request.url.path, exc.message)
        response = error_response(exc.status, exc.code, exc.message)
        if exc.status == 401:
            response.headers["www-authenticate"] = "Bearer"
        if exc.status in CLOSE_AFTER:  # the rest of the body was not read: end the connection
            response.headers["connection"] = "close"
        return response

    @app.exception_handler(BadImage)
    async def bad_image(request: Request, exc: BadImage) -> JSONResponse:
        count(request, exc.code)
        return error_response(400, exc.code, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        count(request, code)
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        count(request, "invalid")
        return error_response(422, "invalid", f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        count(request, "internal")
        LOG.error(
            "%s %s failed: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return error_response(500, "internal", "internal error (details are in the server's log)")


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"status": status, "code": code, "message": message}}, status_code=status
    )


def _endpoint(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "unmatched")
