"""`padim demo`: fit and evaluate on a built-in demo set (offline). Its arguments and its run, side
by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import add, add_runtime
from padim.cli.common import progress

NAME = "demo"


def add_arguments(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    from padim.evaluation.demo import run_demo

    report = run_demo(
        args.out,
        texture=args.texture,
        device=args.device,
        batch_size=args.batch_size,
        progress=progress(args),
    )
    metrics = json.loads((report.parent / "metrics.json").read_text(encoding="utf-8"))
    shown = ("image_auroc", "pixel_auroc", "aupro", "image_f1_at_threshold", "fit_seconds")
    print("demo: " + ", ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics))
    print(f"demo report: {report}")
    return 0
