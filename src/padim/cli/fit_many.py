"""`padim fit-many`: fit one model per product/category listed in a manifest. Its arguments and its
run, side by side."""

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
from padim.errors import PadimError

NAME = "fit-many"


def add_arguments(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    from padim.model import fit_many

    check_engine(args)
    settings = model_settings(args)

    def report(row: dict) -> None:
        if row["status"] == "fitted":
            print(
                f"{row['model']}: fitted on {row['n_train']} images in {row['seconds']:.1f} s, "
                f"threshold {row['threshold']:.3f}",
                flush=True,
            )
        elif row["status"] == "kept":
            print(
                f"{row['model']}: kept {args.out / row['file']} (--overwrite to re-fit)", flush=True
            )
        else:
            print(f"{row['model']}: failed: {row['error']}", file=sys.stderr, flush=True)

    if args.engine == "ray":
        from padim import ray_engine

        def remote(jobs, paths):
            return ray_engine.fit_models(
                jobs, paths, settings, ray_option(args, options.CPUS_PER_MODEL)
            )

        with ray_engine.ray_session(args.address, args.num_cpus):
            rows = fit_many.run(args.manifest, args.out, settings, args.overwrite, remote, report)
    else:
        rows = fit_many.run(args.manifest, args.out, settings, args.overwrite, report=report)
    bad = [r["model"] for r in rows if r["status"] == "failed"]
    summary = args.out / "fit-many.csv"
    if bad:
        raise PadimError(
            f"{len(bad)} of {len(rows)} models failed ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}): see {summary}"
        )
    print(f"{len(rows)} models in {args.out}; summary {summary}")
    return 0
