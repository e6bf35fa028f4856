"""`padim download`: download a public dataset (needs internet). Its arguments and its run, side by
side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

NAME = "download"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("download", help="download a public dataset (needs internet)")
    p.add_argument("dataset", choices=["mvtec"], help="dataset name")
    p.add_argument(
        "--category",
        action="append",
        default=None,
        help="MVTec AD category (repeatable; default: all 15)",
    )
    p.add_argument("--root", type=Path, default=Path("data/mvtec_ad"), help="where to put it")


def run(args: argparse.Namespace) -> int:
    from padim.data.download import LICENSE_NOTE, download_mvtec

    print(LICENSE_NOTE, file=sys.stderr)
    paths = download_mvtec(args.root, args.category)
    print(f"MVTec AD ready: {', '.join(str(p) for p in paths)}")
    return 0
