"""`padim watch`: score a camera, a stream or a video file as frames arrive; send anomalies on. Its
arguments and its run, side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import add, non_negative_int, positive_int, probability
from padim.cli.catalogue_args import add_catalogue, catalogue_location
from padim.errors import PadimError
from padim.files import check_output_file

NAME = "watch"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="score a camera, a stream or a video file as frames arrive; send anomalies on",
        description="Score a live source as frames arrive: a video file played in real time "
        "(--speed), a camera (0 or /dev/video0) or a stream URL (rtsp://, http://). The newest "
        "frame is scored whenever the model is free, so the command never falls behind; frames "
        "it had no time for are dropped and counted. Each anomalous verdict goes to the sinks: "
        "--out (frame and overlay JPEGs, events.jsonl, summary.json) and --webhook (an HTTP "
        "POST of the JSON verdict, retried in the background). Stops at the end of a file, "
        "after --duration or --max-frames, on Ctrl-C or SIGTERM, and prints the counts. Needs "
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
    add_catalogue(p)
    g = p.add_argument_group("records (docs/lifecycle.md)")
    add(g, options.RECORD, action="store_true")
    g.add_argument(
        "--product", default=None, help="the product the records name (default: the model's stem)"
    )
    add(g, options.KEEP_GOOD, type=probability)
    add(g, options.IMAGE_BUDGET_MB, type=float)


def run(args: argparse.Namespace) -> int:
    from padim.data.video import av_module, is_live
    from padim.deploy import watch
    from padim.deploy.scorers import load_scorer, resolve_threshold

    av_module()  # the install hint before any model is loaded
    if args.speed < 0 or (args.duration is not None and args.duration <= 0):
        raise PadimError("--speed must be 0 or positive and --duration positive")
    if args.webhook_timeout <= 0:
        raise PadimError("--webhook-timeout must be positive")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise PadimError(f"--out must be a folder: {args.out}")
    if args.out is not None:  # before the run, not after it
        check_output_file(args.out / "summary.json", "--out's summary.json")
    scorer = load_scorer(args.model, args.device, args.threads)
    opts = watch.WatchOptions(
        threshold=resolve_threshold(scorer, args.threshold, args.operating_point),
        min_area=args.min_area,
        speed=args.speed,
        duration=args.duration,
        max_frames=args.max_frames,
        reconnects=args.reconnects,
        report_every=0 if args.quiet else 5.0,
    )
    sinks: list[watch.Sink] = []
    if args.webhook:
        sinks.append(watch.WebhookSink(args.webhook, args.webhook_retries, args.webhook_timeout))
    if args.out is not None:
        sinks.append(watch.FolderSink(args.out, scorer))

    def report(line: str) -> None:
        print(f"padim: watching {line}", file=sys.stderr, flush=True)

    recorder = frame_recorder(args, scorer) if args.record else None
    stats = watch.watch(scorer, args.source, sinks, opts, report, recorder)
    if stats.source_error and stats.read == 0:
        raise PadimError(stats.source_error)
    print(f"watched {stats.line()}")
    if stats.dropped and not is_live(args.source) and args.speed > 0:
        print(
            f"padim: note: {stats.dropped} of {stats.read} frames were not scored: the model "
            f"scores {stats.scored / max(stats.seconds, 1e-9):.1f} frames/s and the file played "
            "at its own rate (--speed 0 scores every frame of a file)",
            file=sys.stderr,
        )
    if args.out is not None:
        print(f"wrote {watch.write_summary(args.out, stats)}")
    if stats.source_error:
        print(f"padim: warning: the source failed: {stats.source_error}", file=sys.stderr)
    return 0


def frame_recorder(args: argparse.Namespace, scorer: Any) -> Any:
    """Every scored frame's verdict into the catalogue's records (committed before the next
    frame is taken); a frame's JPEG is encoded only when the retention rule keeps it."""
    import hashlib
    import io

    import numpy as np

    from padim.files import file_sha256
    from padim.lifecycle.database import open_catalogue
    from padim.lifecycle.records import Entry, RecordBook, Retention
    from padim.lifecycle.registry import Registry, checked_name

    product = checked_name("product", args.product or args.model.stem)
    catalogue = open_catalogue(catalogue_location(args) or options.CATALOGUE.default, args.files)
    version = Registry(catalogue).number_of(product, file_sha256(args.model))
    book = RecordBook(catalogue, Retention(args.keep_good, int(args.image_budget_mb * (1 << 20))))
    source = f"watch {args.source}"[:200]

    def record(index: int, decision: Any, photo: Any) -> None:
        pixels = np.asarray(photo) if photo is not None else np.zeros((1, 1, 3), np.uint8)

        def jpeg() -> bytes:
            buffer = io.BytesIO()
            photo.save(buffer, format="JPEG", quality=92)
            return buffer.getvalue()

        book.write(
            [
                Entry(
                    product=product,
                    version=version,
                    model_id=scorer.model_id,
                    source=source,
                    name=f"frame {index}",
                    score=decision.score,
                    normalised_score=decision.normalised_score,
                    threshold=decision.threshold,
                    verdict=decision.verdict,
                    regions=[r.to_dict() for r in decision.regions[: options.MAX_REGIONS]],
                    image_sha256=hashlib.sha256(pixels.tobytes()).hexdigest(),
                    image=jpeg if photo is not None else None,
                    suffix=".jpg",
                )
            ]
        )

    return record
