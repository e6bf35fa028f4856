"""`padim serve`: run the inspection service: REST API, web page, Prometheus metrics. Its arguments
and its run, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import add, positive_int, probability
from padim.cli.catalogue_args import add_catalogue, catalogue_location
from padim.errors import PadimError

NAME = "serve"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the inspection service: REST API, web page, Prometheus metrics",
        description="Serve models over HTTP: POST /v1/models/NAME/predict (+ /batch), GET "
        "/v1/models, /v1/health, /metrics, and a web page at /; with one model also POST "
        "/v1/predict (+ /batch) and GET /v1/model. A model's NAME is its file's stem. Models "
        "load on first use (at most --max-loaded in memory); a file replaced on disk (write a "
        "new file, then rename it over the old) is swapped in without a failed request. "
        "Requests arriving together share forward passes (dynamic micro-batching). Needs "
        "padim[serve].",
    )
    p.add_argument(
        "models",
        type=Path,
        nargs="*",
        metavar="MODEL",
        help="a model file (.safetensors, or an export: .onnx, OpenVINO .xml), several, or "
        "one folder of them (or none, with --product)",
    )
    add(p, options.HOST)
    add(p, options.PORT, type=positive_int)
    add(p, options.SERVE_WORKERS, type=positive_int)
    add(p, options.MAX_UPLOAD_MB, type=float)
    add(p, options.MAX_BATCH_IMAGES, type=positive_int)
    add(p, options.MAX_PIXELS, type=positive_int)
    add(p, options.MAX_BATCH, type=positive_int)
    add(p, options.MAX_WAIT_MS, type=float)
    add(p, options.MAX_DECODES, type=positive_int)
    add(p, options.BODY_TIMEOUT_S, type=float)
    add(p, options.HEADER_TIMEOUT_S, type=float)
    add(p, options.BODY_DEADLINE_S, type=float)
    add(p, options.MAX_CONNECTIONS, type=positive_int)
    add(p, options.MAX_LOADED, type=positive_int)
    add(p, options.RELOAD_S, type=float, metavar="S")
    p.add_argument(
        "--no-batching",
        action="store_true",
        help="one image per forward pass (requests are queued one by one)",
    )
    p.add_argument(
        "--examples",
        type=Path,
        nargs="+",
        default=[],
        help="example images for the web page: files and/or folders of the served product, or "
        "'demo' for the built-in demo pictures (default: none)",
    )
    add(p, options.DEVICE)
    add(p, options.THREADS, type=positive_int)
    add(p, options.LOG_LEVEL)
    add_catalogue(p)
    g = p.add_argument_group("registry, records and tokens (docs/lifecycle.md)")
    g.add_argument(
        "--product",
        action="append",
        default=[],
        help="serve this product's --alias version from the catalogue's registry, swapped (no "
        "failed request) when the alias moves; repeat it for several products",
    )
    add(g, options.ALIAS)
    add(g, options.RECORD, action="store_true")
    add(g, options.KEEP_GOOD, type=probability)
    add(g, options.IMAGE_BUDGET_MB, type=float)
    add(g, options.DRIFT_WINDOW, type=positive_int)
    add(g, options.DRIFT_WEBHOOK, metavar="URL")
    add(g, options.AUTH)
    add(g, options.OPEN_READS, action="store_true")
    g.add_argument(
        "--studio",
        action="store_true",
        help="the studio at /studio: create products, upload images, train, judge, promote "
        "and correct from a browser; serves every product's --alias version and records "
        "every verdict (a first admin token is printed when the catalogue has none)",
    )
    g.add_argument(
        "--import-root",
        action="append",
        default=[],
        metavar="DIR",
        help="the studio may add the images of folders under DIR on this computer (repeat it "
        "for several; default: none)",
    )
    g.add_argument("--ssl-keyfile", type=Path, default=None, help="TLS: the key (uvicorn's)")
    g.add_argument("--ssl-certfile", type=Path, default=None, help="TLS: the certificate")


def run(args: argparse.Namespace) -> int:
    from padim.service.server import run_server
    from padim.service.settings import MB, ServeSettings

    if args.max_upload_mb <= 0 or args.max_wait_ms < 0:
        raise PadimError("--max-upload-mb must be positive and --max-wait-ms non-negative")
    timeouts = (args.body_timeout, args.header_timeout, args.body_deadline)
    if not all(0 < t <= 86400 for t in timeouts):
        raise PadimError("--body-timeout, --header-timeout and --body-deadline must be positive")
    upload = int(args.max_upload_mb * MB)
    settings = ServeSettings(
        max_upload_bytes=upload,
        max_request_bytes=max(upload * 5, upload + MB),
        max_batch_images=args.max_batch_images,
        max_pixels=args.max_pixels,
        batching=not args.no_batching,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        examples=tuple(args.examples),
        body_timeout_s=args.body_timeout,
        header_timeout_s=args.header_timeout,
        body_deadline_s=args.body_deadline,
        max_connections=args.max_connections,
        max_decodes=args.max_decodes or 0,
        log_level=args.log_level,
        max_loaded=args.max_loaded,
        reload_s=args.reload_interval,
    )
    if not (args.reload_interval == 0 or 0.1 <= args.reload_interval <= 86400):
        raise PadimError("--reload-interval must be 0 (never) or 0.1 to 86400 seconds")
    lifecycle_settings(args, settings)
    if settings.studio:
        first_token(settings, args.host, args.port)
    run_server(
        args.models,
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        device=args.device,
        log_level=args.log_level,
        threads=args.threads,
        tls=(args.ssl_keyfile, args.ssl_certfile),
    )
    return 0


def first_token(settings: Any, host: str, port: int) -> None:
    """The studio's first admin token, made and shown once when the catalogue has none (the
    person starting it is its administrator); where to open the studio."""
    import sys

    from padim.lifecycle.database import open_catalogue
    from padim.lifecycle.tokens import TokenStore

    shown = "localhost" if host in ("0.0.0.0", "::", "127.0.0.1") else host
    print(f"padim studio: open http://{shown}:{port}/studio", file=sys.stderr)
    if not settings.auth:
        return
    store = TokenStore(open_catalogue(settings.catalogue, settings.files))
    if store.listing():
        return
    token = store.create("studio-admin", "admin", "padim serve --studio")
    print(
        f"padim studio: the catalogue had no tokens; an admin token was made (shown once, "
        f"keep it; the page asks for it): {token}",
        file=sys.stderr,
    )


def lifecycle_settings(args: argparse.Namespace, settings: Any) -> None:
    """The catalogue part of the settings: which catalogue (named, or the default one when
    the registry, records or tokens are asked for), what it serves and records, and tokens."""
    if args.studio and args.models:
        raise PadimError("the studio serves the registry's versions: give no model files")
    if args.studio and args.workers != 1:
        raise PadimError(
            "the studio runs in one process (its jobs and their progress live "
            "there): leave --workers at 1"
        )
    if not args.studio and bool(args.models) == bool(args.product):
        raise PadimError("give model files (or a folder), or --product to serve from the registry")
    wanted = bool(args.product) or args.record or args.auth == "on" or args.studio
    settings.studio = args.studio
    settings.import_roots = tuple(str(Path(r).resolve()) for r in args.import_root)
    for root in args.import_root:
        if not Path(root).is_dir():
            raise PadimError(f"--import-root {root}: not a folder")
    settings.catalogue = catalogue_location(args, needed=wanted)
    settings.files = None if args.files is None else str(args.files)
    settings.products = tuple(args.product)
    settings.alias = args.alias
    settings.record = args.record or args.studio
    settings.keep_good = args.keep_good
    settings.image_budget_mb = args.image_budget_mb
    if args.image_budget_mb <= 0:
        raise PadimError("--image-budget-mb must be positive")
    settings.auth = args.auth == "on" or (args.auth == "auto" and settings.catalogue is not None)
    settings.open_reads = args.open_reads
    settings.drift_window = args.drift_window
    settings.drift_webhook = args.drift_webhook
    if args.drift_webhook and not args.drift_webhook.lower().startswith(("http://", "https://")):
        raise PadimError(
            f"--drift-webhook must be an http:// or https:// URL: {args.drift_webhook}"
        )
    if bool(args.ssl_keyfile) != bool(args.ssl_certfile):
        raise PadimError("TLS needs both --ssl-keyfile and --ssl-certfile")
