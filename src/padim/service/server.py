"""Running the service: one process with uvicorn, or several worker processes that each load
the models themselves (settings passed through the environment). A single model that cannot
score stops the server before it listens; connections that dawdle over their headers are closed; the
allocator is kept to a few arenas so RSS stays flat under concurrent load."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from padim import options
from padim.deploy.scorers import load_scorer
from padim.errors import PadimError
from padim.memory import limit_malloc_arenas, reuse_freed_memory
from padim.service.app import create_app
from padim.service.catalogue import Lifecycle
from padim.service.examples import load_examples
from padim.service.models import MODEL_SUFFIXES, ModelSources, name_files, signature
from padim.service.settings import ServeSettings

ENV_MODEL = "PADIM_SERVE_MODELS"  # JSON list of paths
ENV_SETTINGS = "PADIM_SERVE_SETTINGS"
MALLOC_ARENAS = 2  # glibc's default (8 per core) lets RSS creep under many concurrent clients


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol plus a header timeout: a connection that has not sent a whole
    request head within `header_timeout` seconds (of connecting, or of starting its next
    request) is closed, so slow clients cannot hold sockets forever."""

    header_timeout: float = options.HEADER_TIMEOUT_S.default
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        if self._head_timer is None and (before is None or before.response_complete):
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.cycle is not before:  # a complete request head arrived
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def configure_logging(level: str) -> None:
    """The service's own log lines (client disconnects, internal errors), beside uvicorn's."""
    logger = logging.getLogger("padim.service")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     padim: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())


def prepare_process(settings: ServeSettings) -> None:
    """Set this process up for serving: allocator arenas, logging, header timeout."""
    limit_malloc_arenas(MALLOC_ARENAS)
    reuse_freed_memory()
    raise_open_files_limit()
    configure_logging(settings.log_level)
    HeaderTimeoutProtocol.header_timeout = settings.header_timeout_s


def raise_open_files_limit() -> None:
    """The soft limit of open files up to the hard one: 1,024 sockets is the whole budget by
    default, and a server out of descriptors fails every request (and floods its log)."""
    try:
        import resource
    except ImportError:  # not on this system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def model_sources(
    models: Sequence[Path], device: str, threads: int | None, load_now: bool
) -> ModelSources:
    """The models to serve: one folder (every model file in it) or model files. A single file
    is loaded and checked now, so a model that cannot score stops the server before it
    listens; the others load on their first request."""
    if not models:
        raise PadimError("give a model file, several, or a folder of model files")
    for path in models:
        if not path.exists():
            raise PadimError(f"model file not found: {path}")
    if len(models) > 1 and any(p.is_dir() for p in models):
        raise PadimError("give one folder of models, or model files, not both")
    warned: set[str] = set()  # the pool goes on with it: each unusable file is logged once
    found = name_files(models, warned)
    if not found:
        raise PadimError(f"no model files in {models[0]} (looked for {', '.join(MODEL_SUFFIXES)})")
    load = functools.partial(load_scorer, device=device, threads=threads)  # checks it scores
    ready = {}
    if load_now and len(found) == 1 and not models[0].is_dir():
        (name, path), sig = next(iter(found.items())), signature(models[0])
        ready[name] = (load(path), sig)
    return ModelSources(list(models), load, ready, warned)


def served(
    models: Sequence[Path], settings: ServeSettings, device: str, threads: int | None
) -> tuple[ModelSources, Lifecycle | None]:
    """The models to serve and the catalogue (when the settings name one): a registry alias's
    versions of `settings.products`, or the model files (their registry version, if any, is
    recorded with their verdicts)."""
    lifecycle = Lifecycle.of(settings)
    if lifecycle is not None and (settings.products or settings.studio):
        load = functools.partial(load_scorer, device=device, threads=threads)
        return lifecycle.sources(load), lifecycle
    sources = model_sources(models, device, threads, load_now=True)
    if lifecycle is not None:
        sources = dataclasses.replace(sources, version_of=lifecycle.version_of)
    return sources, lifecycle


def app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn: each worker process loads its models itself."""
    raw = json.loads(os.environ[ENV_SETTINGS])
    raw["examples"] = [Path(p) for p in raw.get("examples", [])]
    device = raw.pop("device", options.DEVICE.default)
    threads = raw.pop("threads", None)
    settings = ServeSettings(**raw)
    prepare_process(settings)
    models = [Path(p) for p in json.loads(os.environ[ENV_MODEL])]
    sources, lifecycle = served(models, settings, device, threads)
    return create_app(sources, settings, lifecycle)


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address this process cannot listen on (another server on the
    port, an address not on this machine), as uvicorn would after the models loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PadimError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server on "
                "that port? choose another --port or --host)"
            ) from None


def run_server(
    models: Sequence[Path],
    settings: ServeSettings,
    host: str = options.HOST.default,
    port: int = options.PORT.default,
    workers: int = options.SERVE_WORKERS.default,
    device: str = options.DEVICE.default,
    log_level: str = options.LOG_LEVEL.default,
    threads: int | None = None,
    tls: tuple[Path | None, Path | None] = (None, None),
) -> None:
    """Check the models (loading a single one, failing before start-up if it cannot score),
    then serve them with uvicorn (over TLS with `tls` = (key file, certificate file))."""
    import uvicorn

    check_port(host, port)  # a busy port is said before the models take seconds to load
    prepare_process(settings)
    sources, lifecycle = served(models, settings, device, threads)  # fails here, clearly
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "http": HeaderTimeoutProtocol,
        "limit_concurrency": settings.max_connections,  # beyond it: 503 at once, no socket held
    }
    if tls[0] is not None and tls[1] is not None:
        common |= {"ssl_keyfile": str(tls[0]), "ssl_certfile": str(tls[1])}
    if workers == 1:
        uvicorn.run(create_app(sources, settings, lifecycle), **common)
        return
    load_examples(settings.examples)
    del sources, lifecycle
    raw = dataclasses.asdict(settings)
    raw["examples"] = [str(p) for p in settings.examples]
    raw["products"] = list(settings.products)
    raw["device"] = device
    raw["threads"] = threads  # worker processes start afresh: pass the thread count on
    os.environ[ENV_MODEL] = json.dumps([str(p) for p in models])
    os.environ[ENV_SETTINGS] = json.dumps(raw)
    uvicorn.run("padim.service.server:app_from_env", factory=True, workers=workers, **common)
