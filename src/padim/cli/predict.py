"""`padim predict`: score images, write CSV/JSON, heat maps and masks. Its arguments and its run,
side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import (
    add,
    add_engine,
    add_runtime,
    add_score_mode,
    non_negative_int,
    positive_int,
)
from padim.cli.common import check_engine, check_inputs, progress, ray_option
from padim.errors import PadimError
from padim.files import check_output_folder

NAME = "predict"


def add_arguments(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    from padim.deploy.predict import write_predictions
    from padim.deploy.scorers import load_scorer

    check_engine(args)
    if args.engine == "ray":
        return predict_on_ray(args)
    check_inputs(args.model, args.inputs)
    check_output_folder(args.out, args.inputs)  # before the model takes seconds to load
    scorer = load_scorer(args.model, args.device, args.threads, args.score_mode)
    results = write_predictions(
        scorer,
        args.inputs,
        args.out,
        threshold=args.threshold,
        images=not args.no_images,
        batch_size=args.batch_size,
        progress=progress(args),
        operating_point=args.operating_point,
        min_area=args.min_area,
        every=args.every,
    )
    failed = sum(r.error != "" for r in results)
    flagged = sum(bool(r.is_anomalous) for r in results)
    where = args.out / "results.csv"
    if failed == len(results):
        raise PadimError(
            f"none of the {failed} images could be scored (first: {results[0].error}); see {where}"
        )
    print(f"scored {len(results) - failed} images: {flagged} anomalous; wrote {where}")
    if failed:
        print(
            f"padim: warning: {failed} of {len(results)} images could not be scored "
            f"(error rows in {where})",
            file=sys.stderr,
        )
    return 0


def predict_on_ray(args: argparse.Namespace) -> int:
    from padim import ray_engine
    from padim.data.pictures import PICTURES
    from padim.data.video import is_video

    if args.no_images or args.threads:
        raise PadimError(
            "--no-images and --threads are the local engine's: the Ray engine "
            "writes pictures only with --maps and uses --cpus-per-worker threads"
        )
    if any(is_video(p) for p in args.inputs):
        raise PadimError("videos are scored by the local engine: leave out --engine ray")
    check_output_folder(args.out, args.inputs)
    opts = ray_engine.BulkOptions(
        workers=args.workers,
        cpus_per_worker=ray_option(args, options.CPUS_PER_WORKER),
        batch_size=args.batch_size,
        threshold=args.threshold,
        operating_point=args.operating_point,
        min_area=args.min_area,
        score_mode=args.score_mode,
        fmt=ray_option(args, options.RESULT_FORMAT),
        maps=(PICTURES if args.maps else ()) + (("map",) if args.raw_maps else ()),
        retry_errors=args.retry_errors,
        progress=progress(args),
    )
    with ray_engine.ray_session(args.address, args.num_cpus):
        summary = ray_engine.predict(args.model, args.inputs, args.out, opts)
    rate = summary.get("images_per_second")
    print(
        f"scored {summary['scored_now']} images ({summary['skipped_done']} already done) with "
        f"{summary['workers']} worker{'s' if summary['workers'] != 1 else ''}"
        f"{f' ({rate:.1f} img/s after start-up)' if rate else ''}: "
        f"{summary['anomalous']} anomalous, {summary['errors']} errors of "
        f"{summary['images']}; wrote {args.out / summary['results']}"
    )
    return 0
