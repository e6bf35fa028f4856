"""The `padim` argument parser, built from `padim.options` (defaults, choices, help); light to
import, so `padim --help` starts instantly."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from padim import __version__, options
from padim.options import Option

EPILOG = "Run 'padim COMMAND --help' for a command's options. Docs: README.md and docs/."

# ----------------------------------------------------------------------------- argument types


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argument type: a whole number of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def share(upper_inclusive: bool) -> Callable[[str], float]:
    """An argument type: a number in [0, 1] (or [0, 1) when not `upper_inclusive`)."""
    interval = "[0, 1]" if upper_inclusive else "[0, 1)"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (0 <= value <= 1 if upper_inclusive else 0 <= value < 1):
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {value}")
        return value

    return parse


positive_int = whole_number(1)
non_negative_int = whole_number(0)
fraction = share(upper_inclusive=False)
probability = share(upper_inclusive=True)


def geometry(text: str) -> int | tuple[int, int]:
    """N or WIDTHxHEIGHT, sides at least 1."""
    from padim.data.preprocess import parse_size
    from padim.errors import PadimError

    try:
        value = parse_size(text)
    except PadimError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if min(value if isinstance(value, tuple) else (value,)) < 1:
        raise argparse.ArgumentTypeError(f"sides must be at least 1, got {text!r}")
    return value


def size(text: str) -> int | tuple[int, int] | str:
    lowered = text.lower()
    return lowered if lowered in ("auto", "native") else geometry(text)


def crop(text: str) -> int | tuple[int, int] | str | None:
    lowered = text.lower()
    if lowered in ("none", "default"):
        return None if lowered == "none" else "default"
    return geometry(text)


def channels(text: str) -> int | str:
    return "all" if text.lower() == "all" else positive_int(text)


def add(group: Any, opt: Option, ray_only: bool = False, **kwargs: Any) -> None:
    """One option from its `Option` spec; Ray-only options default to None ("not given")."""
    kwargs.setdefault("default", None if ray_only else opt.default)
    if opt.choices is not None and "choices" not in kwargs and kwargs.get("action") is None:
        kwargs["choices"] = opt.choices
    group.add_argument(opt.flag, help=opt.describe(), **kwargs)


# ----------------------------------------------------------------------------- option groups


def add_runtime(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device")
    add(g, options.DEVICE)
    add(g, options.THREADS, type=positive_int)
    add(g, options.BATCH_SIZE, type=positive_int)
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def add_engine(p: argparse.ArgumentParser, what: str) -> argparse._ArgumentGroup:
    g = p.add_argument_group("engine")
    g.add_argument(
        options.ENGINE.flag,
        choices=options.ENGINES,
        default=options.ENGINE.default,
        help=f"{options.ENGINE.describe()}; with ray: {what}",
    )
    add(g, options.ADDRESS, ray_only=True)
    add(g, options.NUM_CPUS, ray_only=True, type=positive_int)
    return g


def add_model_options(
    p: argparse.ArgumentParser, threshold: bool = True, fixed_threshold: bool = True
) -> None:
    g = p.add_argument_group("model")
    add(g, options.BACKBONE, choices=None, metavar="NAME")
    add(g, options.SIZE, type=size, default=None)  # None: 256, or native with --tile
    add(g, options.CROP, type=crop)
    add(g, options.TILE, type=geometry)
    add(g, options.TILE_OVERLAP, type=int)
    add(g, options.TILE_STATISTICS)
    add(g, options.CHANNELS, type=channels)
    add(g, options.EMBEDDING)
    add(g, options.SEED, type=int)
    add(g, options.WEIGHTS)
    add(g, options.SHRINKAGE)
    add(g, options.STORAGE)
    add(g, options.KEEP_STATISTICS)
    if not threshold:
        return
    g = p.add_argument_group("threshold")
    add(g, options.HOLDOUT, type=fraction)
    add(g, options.THRESHOLD_QUANTILE, type=float)
    if fixed_threshold:
        add(g, options.THRESHOLD, type=float)


def add_score_mode(p: argparse.ArgumentParser, fitting: bool) -> None:
    """--score-mode: the mode a fit calibrates for, or (scoring) another mode than the model's."""
    if fitting:
        add(p, options.SCORE_MODE)
    else:
        p.add_argument(
            options.SCORE_MODE.flag,
            choices=options.SCORE_MODES,
            default=None,
            help="score with this mode instead of the model's (its own calibrated "
            f"threshold): {options.SCORE_MODE.help}",
        )


def add_labelled_data(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("data", type=Path, nargs="?", help=f"{what} (MVTec AD category folder)")
    p.add_argument("--good", type=Path, help="folder of good images")
    p.add_argument(
        "--defective",
        type=Path,
        action="append",
        default=[],
        help="folder of defective images (repeatable)",
    )


# ----------------------------------------------------------------------------- commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="padim",
        description="PaDiM anomaly detection: fit on good images, localise defects, evaluate, "
        "serve.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"padim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "fit",
        help="fit a model on good images",
        description="Fit a model on good images: an MVTec AD category folder "
        "(uses train/good) or a folder of good images (sub-folders included).",
    )
    p.add_argument(
        "data",
        type=Path,
        help="MVTec AD category folder, a folder of good images, a video file or a folder of "
        "videos (needs padim[video]), or an STC root (training/videos)",
    )
    p.add_argument("--out", type=Path, required=True, help="model file to write (.safetensors)")
    add_model_options(p)
    add(p, options.ROI, type=Path, metavar="MASK")
    add(p, options.EVERY, type=positive_int, metavar="N")
    add(p, options.SCENE)
    add_score_mode(p, fitting=True)
    add_runtime(p)
    g = add_engine(p, "the batches are sharded over Ray tasks and their sums merged exactly")
    add(g, options.SHARDS, ray_only=True, type=positive_int)
    add(g, options.CPUS_PER_TASK, ray_only=True, type=positive_int)

    p = sub.add_parser(
        "fit-many",
        help="fit one model per product/category listed in a manifest",
        description="Fit one model per name in a manifest (CSV or Parquet with columns 'model' "
        "and 'path': a folder of good images, an MVTec AD category or one image; several rows "
        "may name one model). Writes OUT/<model>.safetensors and OUT/fit-many.csv; models "
        "already in OUT are kept unless --overwrite; one failing model does not stop the rest.",
    )
    p.add_argument("manifest", type=Path, help="CSV or Parquet manifest (columns model, path)")
    p.add_argument("--out", type=Path, required=True, help="folder for the model files")
    p.add_argument("--overwrite", action="store_true", help="re-fit models already in OUT")
    add_model_options(p, fixed_threshold=False)
    add_score_mode(p, fitting=True)
    add_runtime(p)
    g = add_engine(p, "the models are fitted in parallel Ray tasks")
    add(g, options.CPUS_PER_MODEL, ray_only=True, type=positive_int)

    p = sub.add_parser(
        "predict",
        help="score images, write CSV/JSON, heat maps and masks",
        description="Score images: files, folders (searched recursively) and CSV/Parquet "
        "manifests. Writes DIR/results.csv (path,score,label,...), DIR/results.json and "
        "per-image overlay, heat-map and mask PNGs.",
    )
    p.add_argument(
        "model", type=Path, help="model file (.safetensors), or an export (.onnx, OpenVINO .xml)"
    )
    p.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        help="image files, folders of images (sub-folders included) and/or CSV/Parquet "
        "manifests (a 'path' column; relative paths are relative to the manifest)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--threshold", type=float, default=None, help="override the model's threshold")
    add(p, options.OPERATING_POINT, metavar="NAME")
    add(p, options.MIN_AREA, type=non_negative_int)
    add(p, options.EVERY, type=positive_int, metavar="N")
    p.add_argument("--no-images", action="store_true", help="only write results.csv/json")
    add_score_mode(p, fitting=False)
    add_runtime(p)
    g = add_engine(
        p,
        "a Ray Data pipeline of scoring actors writes a resumable job folder: "
        "DIR/results.parquet (or .csv), summary.json, parts/ and, with --maps, maps/;"
        " a re-run scores only what is missing",
    )
    add(g, options.WORKERS, ray_only=True, type=positive_int)
    add(g, options.CPUS_PER_WORKER, ray_only=True, type=positive_int)
    add(g, options.RESULT_FORMAT, ray_only=True)
    g.add_argument(
        "--maps",
        action="store_true",
        help="ray: also write overlay, heat-map and mask PNGs to DIR/maps",
    )
    g.add_argument(
        "--raw-maps",
        action="store_true",
        help="ray: also write each raw anomaly map (float16 .npy, input size) to "
        "DIR/maps, to re-threshold later without scoring again",
    )
    g.add_argument(
        "--retry-errors",
        action="store_true",
        help="ray: score again the images that failed in an earlier run",
    )

    p = sub.add_parser(
        "evaluate",
        help="image and pixel metrics on a labelled test set",
        description="Evaluate on an MVTec AD category folder (test/, "
        "ground_truth/) or on plain folders given with --good/--defective/--masks.",
    )
    p.add_argument("model", type=Path, help="model file")
    add_labelled_data(p, "labelled test data")
    p.add_argument("--masks", type=Path, help="folder of masks named like the defective images")
    p.add_argument("--json", type=Path, help="write the metrics to this JSON file")
    p.add_argument(
        "--figure",
        type=Path,
        help="write a picture grid of results to this PNG (needs padim[report])",
    )
    p.add_argument(
        "--perturb",
        metavar="NAME",
        default=None,
        help="evaluate on perturbed test images: rd-mvtec or rd-mvtec-test (random "
        "rotation +/-10 deg and random crop, seeded by --seed; for the paper's full "
        "protocol the model must also be fitted on perturbed images: see benchmark)",
    )
    p.add_argument("--seed", type=int, default=options.SEED.default, help="seed of --perturb")
    add(p, options.EVERY, type=positive_int, metavar="N")
    add(p, options.SCENE)
    p.add_argument(
        options.MIN_AREA.flag,
        type=non_negative_int,
        default=options.MIN_AREA.default,
        help="predicted regions smaller than this many pixels (of the evaluated maps, at the "
        "model's input size) are not counted as false regions",
    )
    add_score_mode(p, fitting=False)
    add_runtime(p)

    p = sub.add_parser(
        "benchmark",
        help="fit + evaluate backbones x MVTec AD categories, write report tables",
        description="Fit and evaluate every (backbone, category) pair found under an MVTec AD "
        "root; writes DIR/results.json, results.csv, tables.md (the published tables' layout) "
        "and figures/. Categories not present are skipped with a note.",
    )
    p.add_argument(
        "--root",
        type=Path,
        required=True,
        help="MVTec AD root (one folder per category) or one category folder",
    )
    p.add_argument(
        "--categories",
        nargs="+",
        default=None,
        help="categories to run (default: every one found under --root)",
    )
    add(p, options.BENCHMARK_BACKBONES, choices=None, nargs="+", metavar="NAME")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument(
        "--perturb",
        nargs="+",
        metavar="NAME",
        default=[],
        help="also run the paper's non-aligned protocol: rd-mvtec = refit on "
        "training images and evaluate on test images randomly rotated (+/-10 deg) "
        "and cropped, seeded; rd-mvtec-test = the aligned model on perturbed test "
        "images",
    )
    p.add_argument(
        "--compare-published",
        action="store_true",
        help="add the published PaDiM rows and the differences to tables.md",
    )
    p.add_argument(
        "--geometry",
        dest="geometries",
        action="append",
        default=[],
        metavar="SPEC",
        help="run this input geometry (repeatable; replaces --size/--crop/--tile): "
        "SIZE[,crop=C][,tile=T][,overlap=O][,statistics=location|shared], e.g. 256, auto, "
        "native,tile=256; tables.md gains a geometry table (accuracy, time, memory)",
    )
    p.add_argument("--keep-models", action="store_true", help="keep model files in DIR/models")
    add(p, options.EVERY, type=positive_int, metavar="N")
    p.add_argument(
        "--no-figures",
        action="store_true",
        help="skip the per-category figures (which need padim[report])",
    )
    add_model_options(p, threshold=False)
    add_score_mode(p, fitting=True)
    add_runtime(p)

    p = sub.add_parser(
        "calibrate",
        help="choose a model's threshold: operating points by target rates, F1, or a value",
        description="Choose the model's threshold and store it as a named operating point: "
        "--target-fpr F (good images only: the model's held-out ones, or DATA / --good), "
        "--target-recall R (labelled data, then the best precision), the F1-optimal one on "
        "labelled data (the default when data is given), --threshold T, or --use NAME to "
        "switch to a stored one. Reports the false-alarm and miss rates it gives on those "
        "images with 95 % intervals.",
    )
    p.add_argument("model", type=Path, help="model file")
    add_labelled_data(p, "labelled validation data")
    p.add_argument("--threshold", type=float, default=None, help="set this threshold")
    add(p, options.TARGET_FPR, type=fraction, metavar="F")
    add(p, options.TARGET_RECALL, type=probability, metavar="R")
    p.add_argument(
        "--name", default=None, help="name of the operating point (default: from the rule)"
    )
    p.add_argument("--use", metavar="NAME", default=None, help="make a stored point current")
    p.add_argument("--out", type=Path, default=None, help="write here (default: update MODEL)")
    add_runtime(p)

    p = sub.add_parser(
        "update",
        help="add good images to a fitted model without refitting",
        description="Add good images to a model fitted with --statistics keep: their sums are "
        "merged into the model's (the result equals a fit on all images); part of them is "
        "held out to re-estimate the threshold and the operating points chosen on held-out "
        "images.",
    )
    p.add_argument("model", type=Path, help="model file (fitted with --statistics keep)")
    p.add_argument(
        "inputs", type=Path, nargs="+", help="new good images: files, folders, manifests"
    )
    p.add_argument("--out", type=Path, required=True, help="model file to write")
    add_runtime(p)

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
        nargs="+",
        metavar="MODEL",
        help="a model file (.safetensors, or an export: .onnx, OpenVINO .xml), several, or "
        "one folder of them",
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
        help="example images for the web page: files and/or folders (default: "
        "built-in demo images)",
    )
    add(p, options.DEVICE)
    add(p, options.THREADS, type=positive_int)
    add(p, options.LOG_LEVEL)

    p = sub.add_parser(
        "watch",
        help="score a camera, a stream or a video file as frames arrive; send anomalies on",
        description="Score a live source as frames arrive: a video file played in real time "
        "(--speed), a camera (0 or /dev/video0) or a stream URL (rtsp://, http://). The newest "
        "frame is scored whenever the model is free, so the command never falls behind; frames "
        "it had no time for are dropped and counted. Each anomalous verdict goes to the sinks: "
        "--out (frame and overlay PNGs, events.jsonl, summary.json) and --webhook (an HTTP "
        "POST of the JSON verdict, retried in the background). Stops at the end of a file, "
        "after --duration or --max-frames, or on Ctrl-C, and prints the counts. Needs "
        "padim[video].",
    )
    p.add_argument(
        "model", type=Path, help="model file (.safetensors), or an export (.onnx, OpenVINO .xml)"
    )
    p.add_argument(
        "source", help="video file, camera (0, /dev/video0) or stream URL (rtsp://, http://)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="folder sink for anomalous frames and events"
    )
    p.add_argument("--webhook", metavar="URL", default=None, help="POST each anomalous verdict")
    add(p, options.WEBHOOK_RETRIES, type=non_negative_int)
    add(p, options.WEBHOOK_TIMEOUT_S, type=float, metavar="S")
    p.add_argument("--threshold", type=float, default=None, help="override the model's threshold")
    add(p, options.OPERATING_POINT, metavar="NAME")
    add(p, options.MIN_AREA, type=non_negative_int)
    add(p, options.SPEED, type=float)
    add(p, options.RECONNECTS, type=non_negative_int)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument(
        "--max-frames", type=positive_int, default=None, help="stop after scoring this many"
    )
    add(p, options.DEVICE)
    add(p, options.THREADS, type=positive_int)
    p.add_argument("--quiet", action="store_true", help="no progress lines")

    p = sub.add_parser(
        "export",
        help="export a model to ONNX (or OpenVINO) for torch-free deployment",
        description="Export the whole inference path (normalisation, backbone, embedding, "
        "Mahalanobis scoring, upsampling, smoothing) as one graph with a dynamic batch size; "
        "outputs `score` (N) and `anomaly_map` (N x 1 x H x W). The export is checked against "
        "the torch model before the command succeeds.",
    )
    p.add_argument("model", type=Path, help="model file (.safetensors)")
    add(p, options.EXPORT_FORMAT)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="FILE.onnx, or FILE.xml for openvino (.bin beside it)",
    )
    add(p, options.OPSET, type=positive_int)
    p.add_argument(
        "--external-data",
        action="store_true",
        help="weights in FILE.data beside the graph (automatic over 2 GB)",
    )
    p.add_argument("--fp16", action="store_true", help="openvino: compress weights to FP16")
    p.add_argument(
        "--verify",
        type=Path,
        nargs="*",
        default=None,
        help="images or folders to check parity on (default: 4 random images)",
    )
    add(p, options.EXPORT_TOLERANCE, type=float)
    add(p, options.THREADS, type=positive_int)

    p = sub.add_parser("info", help="show a model file's configuration")
    p.add_argument("model", type=Path)

    sub.add_parser("backbones", help="list the available backbones")

    p = sub.add_parser(
        "demo",
        help="fit and evaluate on a built-in demo set (offline)",
        description="Builds a small inspection task from real texture photos "
        "shipped with scikit-image, with synthetic defects and exact masks; fits, "
        "evaluates and writes a report with metrics and heat maps.",
    )
    p.add_argument("--out", type=Path, default=Path("padim-demo"), help="output folder")
    add(p, options.DEMO_TEXTURE)
    add_runtime(p)

    p = sub.add_parser("download", help="download a public dataset (needs internet)")
    p.add_argument("dataset", choices=["mvtec"], help="dataset name")
    p.add_argument(
        "--category",
        action="append",
        default=None,
        help="MVTec AD category (repeatable; default: all 15)",
    )
    p.add_argument("--root", type=Path, default=Path("data/mvtec_ad"), help="where to put it")
    return parser
