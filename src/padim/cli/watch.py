"""`padim watch`: score a camera, a stream or a video file as frames arrive; send anomalies on. Its
arguments and its run, side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import add, non_negative_int, positive_int
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

    stats = watch.watch(scorer, args.source, sinks, opts, report)
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
