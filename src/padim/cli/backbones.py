"""`padim backbones`: list the available backbones. Its arguments and its run, side by side."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "backbones"


def add_arguments(sub: Any) -> None:
    sub.add_parser("backbones", help="list the available backbones")


def run(args: argparse.Namespace) -> int:
    from padim.core.backbones import available_backbones, get_backbone

    for name in available_backbones():
        spec = get_backbone(name)
        print(
            f"{name:18s} channels {spec.total_channels:4d} (keep {spec.default_keep:3d})  "
            f"{'offline' if spec.offline else 'download'}  {spec.weights_source}"
        )
    return 0
