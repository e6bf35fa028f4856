"""Running the service: one process with uvicorn, or several worker processes that each load
the model themselves (settings passed through the environment). A model that cannot score
stops the server before it listens; connections that dawdle over their headers are closed; the
allocator is kept to a few arenas so RSS stays flat under concurrent load."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from padim import options
from padim.deploy.scorers import Scorer, check_scorer, load_scorer
from padim.memory import limit_malloc_arenas
from padim.service.app import create_app
from padim.service.examples import load_examples
from padim.service.settings import ServeSettings

ENV_MODEL = "PADIM_SERVE_MODEL"
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


def ready_scorer(
    model: Path | str, device: str, threads: int | None, settings: ServeSettings
) -> Scorer:
    """Load and self-test the model, and set this process up for serving."""
    limit_malloc_arenas(MALLOC_ARENAS)
    configure_logging(settings.log_level)
    HeaderTimeoutProtocol.header_timeout = settings.header_timeout_s
    scorer = load_scorer(model, device, threads)
    check_scorer(scorer)
    return scorer


def app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn: each worker process loads the model itself."""
    raw = json.loads(os.environ[ENV_SETTINGS])
    raw["examples"] = [Path(p) for p in raw.get("examples", [])]
    device = raw.pop("device", options.DEVICE.default)
    threads = raw.pop("threads", None)
    settings = ServeSettings(**raw)
    return create_app(ready_scorer(os.environ[ENV_MODEL], device, threads, settings), settings)


def run_server(
    model: Path,
    settings: ServeSettings,
    host: str = options.HOST.default,
    port: int = options.PORT.default,
    workers: int = options.SERVE_WORKERS.default,
    device: str = options.DEVICE.default,
    log_level: str = options.LOG_LEVEL.default,
    threads: int | None = None,
) -> None:
    """Load the model (failing before start-up if it cannot), then serve it with uvicorn."""
    import uvicorn

    scorer = ready_scorer(model, device, threads, settings)  # fails here, clearly, or serves
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "http": HeaderTimeoutProtocol,
    }
    if workers == 1:
        uvicorn.run(create_app(scorer, settings), **common)
        return
    load_examples(settings.examples)
    del scorer
    raw = dataclasses.asdict(settings)
    raw["examples"] = [str(p) for p in settings.examples]
    raw["device"] = device
    raw["threads"] = threads  # worker processes start afresh: pass the thread count on
    os.environ[ENV_MODEL] = str(model)
    os.environ[ENV_SETTINGS] = json.dumps(raw)
    uvicorn.run("padim.service.server:app_from_env", factory=True, workers=workers, **common)
