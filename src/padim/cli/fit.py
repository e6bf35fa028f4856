"""`padim fit`: fit a model on good images. Its arguments and its run, side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import (
    add,
    add_engine,
    add_model_options,
    add_runtime,
    add_score_mode,
    positive_int,
)
from padim.cli.common import check_engine, model_settings, ray_option
from padim.files import check_output_file

NAME = "fit"


def add_arguments(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    from padim.data.datasets import training_inputs

    check_engine(args)
    check_output_file(args.out)
    data = training_inputs(args.data, args.every, args.scene)  # before torch is imported
    from padim.model.estimator import Padim

    model = Padim(**model_settings(args))
    if args.engine == "ray":
        from padim import ray_engine

        with ray_engine.ray_session(args.address, args.num_cpus):
            ray_engine.fit(
                model,
                data,
                shards=args.shards,
                cpus_per_task=ray_option(args, options.CPUS_PER_TASK),
            )
    else:
        model.fit(data)
    if args.threshold is not None:
        model.set_threshold(args.threshold)
    model.save(args.out)
    training = model.training_
    assert training is not None and model.threshold_ is not None
    if training.warning:
        print(f"padim: warning: {training.warning}", file=sys.stderr)
    print(
        f"fitted {args.backbone} on {training.n_train} images in {training.fit_seconds:.1f} s"
        f"{' on ray' if args.engine == 'ray' else ''}; threshold {model.threshold_:.3f} "
        f"({model.threshold_source_}); wrote {args.out}"
    )
    print(describe_geometry(model, args.out.stat().st_size))
    return 0


def describe_geometry(model: Any, file_bytes: int) -> str:
    """One line: input, tiles, Gaussian positions x channels, model file size, peak memory."""
    from padim.memory import process_peak_bytes

    g = model.geometry()
    tiles = g.get("tiling")
    tiling = ""
    if tiles:
        across, down = tiles["tiles"]
        tiling = (
            f", {across * down} tiles of {tiles['tile'][0]}x{tiles['tile'][1]} "
            f"(overlap {tiles['overlap']}, {tiles['statistics']} statistics)"
        )
    return (
        f"input {g['input'][0]}x{g['input'][1]}{tiling}; {g['positions']:,} positions x "
        f"{g['embedding_dim']} channels; model file {file_bytes / 2**20:.1f} MiB; "
        f"fit peak memory {process_peak_bytes() / 2**30:.2f} GiB"
    )
