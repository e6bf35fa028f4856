"""`padim benchmark`: fit + evaluate backbones x MVTec AD categories, write report tables. Its
arguments and its run, side by side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import add, add_model_options, add_runtime, add_score_mode, positive_int
from padim.cli.common import model_settings

NAME = "benchmark"


def add_arguments(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    from padim.evaluation.benchmark import BenchmarkOptions, run_benchmark

    fields = set(BenchmarkOptions.__dataclass_fields__)
    model = {k: v for k, v in model_settings(args).items() if k in fields}
    opts = BenchmarkOptions(
        root=args.root,
        out=args.out,
        categories=args.categories,
        backbones=list(args.backbones),
        perturb=args.perturb,
        geometries=args.geometries,
        compare_published=args.compare_published,
        keep_models=args.keep_models,
        figures=not args.no_figures,
        command="padim " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["benchmark"] else "",
        every=args.every,
        **model,
    )
    results = run_benchmark(opts)
    print(
        f"benchmarked {len(results)} runs; wrote {args.out / 'tables.md'}, results.json, "
        f"results.csv" + ("" if args.no_figures else " and figures/")
    )
    return 0
