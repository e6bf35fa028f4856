"""Running the service: one process with uvicorn, or several worker processes that each load
the model themselves (settings passed through the environment)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from fastapi import FastAPI

from padim import options
from padim.deploy.scorers import load_scorer
from padim.service.app import create_app
from padim.service.examples import load_examples
from padim.service.settings import ServeSettings

ENV_MODEL = "PADIM_SERVE_MODEL"
ENV_SETTINGS = "PADIM_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn: each worker process loads the model itself."""
    raw = json.loads(os.environ[ENV_SETTINGS])
    raw["examples"] = [Path(p) for p in raw.get("examples", [])]
    device = raw.pop("device", options.DEVICE.default)
    threads = raw.pop("threads", None)
    return create_app(load_scorer(os.environ[ENV_MODEL], device, threads), ServeSettings(**raw))


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
    uvicorn.run(
        "padim.service.server:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )
