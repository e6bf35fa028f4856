"""The `padim` command line: fit, fit-many, predict, evaluate, benchmark, calibrate, serve,
export, info, backbones, demo, download.

User mistakes end with one line on stderr (`padim: error: ...`) and exit status 1 (2 for bad
usage); outputs are written atomically, so a failed command leaves nothing half-written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from padim.cli.commands import COMMANDS, apply_threads
from padim.cli.parser import build_parser
from padim.errors import PadimError

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        apply_threads(args)
        return int(COMMANDS[args.command](args) or 0)
    except PadimError as exc:
        print(f"padim: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("padim: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            "padim: error: out of memory; try a smaller --batch-size, --size or --channels",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:  # disk full, permissions, ... on output paths
        print(
            f"padim: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return 1
    finally:
        sys.stdout.flush()
