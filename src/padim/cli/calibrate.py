"""`padim calibrate`: choose a model's threshold: operating points by target rates, F1, or a value.
Its arguments and its run, side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import add, add_labelled_data, add_runtime, fraction, probability
from padim.cli.common import labelled_samples, progress
from padim.errors import PadimError
from padim.files import check_output_file

NAME = "calibrate"


def add_arguments(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from padim.model.estimator import Padim

    out = args.out or args.model
    check_output_file(out)
    given = {
        "--threshold": args.threshold is not None,
        "--target-fpr": args.target_fpr is not None,
        "--target-recall": args.target_recall is not None,
        "--use": args.use is not None,
    }
    if sum(given.values()) > 1:
        raise PadimError(f"give one of {', '.join(given)}, not several")
    has_data = args.data is not None or bool(args.good) or bool(args.defective)
    if (args.threshold is not None or args.use is not None) and has_data:
        raise PadimError("--threshold and --use take no data")
    # the training statistics, when the file has them, are written back unchanged
    model = Padim.load(args.model, args.device, args.batch_size, statistics=True)
    model.progress = progress(args)
    if args.use is not None:
        model.use_operating_point(args.use)
    elif args.threshold is not None:
        model.set_threshold(args.threshold, name=args.name or "manual")
    elif args.target_fpr is not None and not has_data:
        model.calibrate_fpr(args.target_fpr, name=args.name)
    else:
        samples = labelled_samples(args)
        labels = np.array([s.label for s in samples])
        if args.target_fpr is not None:
            good = [s.path for s in samples if s.label == 0]
            if not good:
                raise PadimError("--target-fpr needs good images; the data has none")
            scores, _ = model.score(good)
            model.calibrate_fpr(
                args.target_fpr, scores, f"{len(good)} given good images", name=args.name
            )
        else:
            scores, _ = model.score([s.path for s in samples])
            if args.target_recall is not None:
                model.calibrate_recall(scores, labels, args.target_recall, name=args.name)
            else:
                model.calibrate(scores, labels, name=args.name or "f1")
    model.save(out)
    name = model.operating_point_
    point = model.operating_points_[name] if name is not None else None
    print(f"threshold {model.threshold_:.4f}, operating point {name}: {model.threshold_source_}")
    if point is not None and point.warning:
        print(f"padim: warning: {point.warning}", file=sys.stderr)
    print(f"wrote {out}")
    return 0
