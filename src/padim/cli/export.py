"""`padim export`: export a model to ONNX (or OpenVINO) for torch-free deployment. Its arguments
and its run, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import add, positive_int

NAME = "export"


def add_arguments(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    from padim.deploy.export import export_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    r = export_model(
        args.model,
        args.out,
        args.format,
        args.opset,
        args.external_data or None,
        args.fp16,
        args.verify or (),
        args.tolerance,
        args.threads,
    )
    print(
        f"exported {r.path} ({r.fmt}); on {r.n_checked} {r.checked_on} images: max relative "
        f"score difference {r.max_rel_score_diff:.2e}, map {r.max_rel_map_diff:.2e}"
    )
    return 0
