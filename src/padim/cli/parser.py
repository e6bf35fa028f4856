"""The `padim` argument parser: one sub-command per module of `padim.cli` (each module's
`add_arguments` beside its `run`); light to import, so `padim --help` starts instantly."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from types import ModuleType
from typing import NoReturn

from padim import __version__
from padim.cli import (
    backbones,
    benchmark,
    calibrate,
    demo,
    download,
    drift,
    evaluate,
    export,
    fit,
    fit_many,
    info,
    predict,
    records,
    registry,
    retrain,
    serve,
    tokens,
    update,
    watch,
)

EPILOG = "Run 'padim COMMAND --help' for a command's options. Docs: README.md and docs/."
MODULES: tuple[ModuleType, ...] = (
    fit,
    fit_many,
    predict,
    evaluate,
    benchmark,
    calibrate,
    update,
    serve,
    watch,
    registry,
    records,
    retrain,
    drift,
    tokens,
    export,
    info,
    backbones,
    demo,
    download,
)
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {m.NAME: m.run for m in MODULES}


class Parser(argparse.ArgumentParser):
    """argparse with the documented error form: one line, `padim: error: ...`, exit status 2
    (usage mistakes), and where to look for the options."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"padim: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="padim",
        description="PaDiM anomaly detection: fit on good images, localise defects, evaluate, "
        "serve.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"padim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in MODULES:
        module.add_arguments(sub)
    return parser
