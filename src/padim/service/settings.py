"""The limits and batching of one service; every field is a `padim serve` option
(defaults in `padim.options`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from padim import options

MB = 1 << 20


@dataclass
class ServeSettings:
    """Limits and batching of one service; all of it is on the `padim serve` command line."""

    max_upload_bytes: int = int(options.MAX_UPLOAD_MB.default * MB)  # one image
    max_request_bytes: int = int(5 * options.MAX_UPLOAD_MB.default * MB)  # one batch request
    max_batch_images: int = options.MAX_BATCH_IMAGES.default  # images in one batch request
    max_pixels: int = options.MAX_PIXELS.default  # declared pixel count refused before decoding
    batching: bool = True  # dynamic micro-batching across requests
    max_batch: int = options.MAX_BATCH.default  # images per forward pass
    max_wait_ms: float = options.MAX_WAIT_MS.default  # wait for images still being decoded
    examples: Sequence[Path] = field(default_factory=tuple)  # files/folders; () = demo images
    body_timeout_s: float = options.BODY_TIMEOUT_S.default  # longest pause inside a body
    header_timeout_s: float = options.HEADER_TIMEOUT_S.default  # headers must arrive by then
    body_deadline_s: float = options.BODY_DEADLINE_S.default  # a whole body must arrive by then
    max_connections: int = options.MAX_CONNECTIONS.default  # per process (uvicorn's limit)
    max_decodes: int = 0  # images decoded at once (0: one per CPU)
    log_level: str = options.LOG_LEVEL.default
    max_loaded: int = options.MAX_LOADED.default  # models in memory at once (LRU)
    reload_s: float = options.RELOAD_S.default  # model files checked this often (0: never)
    catalogue: str | None = None  # a catalogue folder or database URL (None: no catalogue)
    files: str | None = None  # the catalogue's files folder, with a database URL
    products: Sequence[str] = field(default_factory=tuple)  # served from the registry
    alias: str = options.ALIAS.default  # ... at this alias
    record: bool = False  # every verdict recorded in the catalogue
    keep_good: float = options.KEEP_GOOD.default
    image_budget_mb: float = options.IMAGE_BUDGET_MB.default
    drift_window: int = options.DRIFT_WINDOW.default  # results the drift monitor looks at
    drift_webhook: str | None = None  # drift alarms (and their end) are POSTed here
    auth: bool = False  # every request needs a token (roles operator, engineer, admin)
    open_reads: bool = False  # with auth: GET endpoints need none
    studio: bool = False  # the studio: every product's alias served, /v1/studio routes
    import_roots: Sequence[str] = field(default_factory=tuple)  # server folders it may read
