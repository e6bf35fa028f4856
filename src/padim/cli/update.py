"""`padim update`: add good images to a fitted model without refitting. Its arguments and its run,
side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from padim.cli.arguments import add_runtime
from padim.cli.common import progress
from padim.files import check_output_file

NAME = "update"


def add_arguments(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    from padim.data.sources import source_paths
    from padim.model.estimator import Padim

    check_output_file(args.out)
    model = Padim.load(args.model, args.device, args.batch_size, statistics=True)
    model.progress = progress(args)
    single = len(args.inputs) == 1 and args.inputs[0].is_dir()
    before = model.training_.n_train if model.training_ else 0
    model.partial_fit(args.inputs[0] if single else source_paths(args.inputs))
    model.save(args.out)
    training = model.training_
    assert training is not None and training.updates and model.threshold_ is not None
    last = training.updates[-1]
    print(
        f"added {last['added']} images ({last['held_out']} held out for the threshold) in "
        f"{last['seconds']:.1f} s: {before} -> {training.n_train} training images; threshold "
        f"{model.threshold_:.3f} ({model.threshold_source_}); wrote {args.out}"
    )
    if last.get("warning"):
        print(f"padim: warning: {last['warning']}", file=sys.stderr)
    stale = [p.name for p in model.operating_points_.values() if p.warning]
    if stale:
        print(
            f"padim: warning: operating points {', '.join(stale)}: see padim info", file=sys.stderr
        )
    return 0
