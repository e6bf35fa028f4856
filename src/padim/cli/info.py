"""`padim info`: show a model file's configuration. Its arguments and its run, side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

NAME = "info"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser("info", help="show a model file's configuration")
    p.add_argument("model", type=Path)


def run(args: argparse.Namespace) -> int:
    suffix = args.model.suffix.lower()
    if suffix in (".onnx", ".xml"):
        from padim.deploy.scorers import load_scorer

        print(json.dumps(load_scorer(args.model).describe(), indent=2))
        return 0
    from padim.model.modelfile import read_model_config

    config = read_model_config(args.model)
    info = config.get("info") or {}
    digests = info.get("image_digests")
    if isinstance(digests, list):  # one line, not hundreds: the registry keeps them all
        info["image_digests"] = f"{len(digests)} SHA-256 digests of the training images"
    print(json.dumps(config, indent=2))
    return 0
