"""The `padim` command line: fit, fit-many, predict, evaluate, benchmark, calibrate, serve,
export, info, backbones, demo, download.

User mistakes end with one line on stderr (`padim: error: ...`) and exit status 1 (2 for bad
usage); outputs are written atomically, so a failed command leaves nothing half-written.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from padim.cli.common import apply_threads
from padim.cli.parser import COMMANDS, build_parser
from padim.errors import PadimError
from padim.memory import reuse_freed_memory

__all__ = ["build_parser", "main", "terminate_cleanly"]


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def terminate_cleanly() -> Iterator[None]:
    """SIGTERM ends the command like Ctrl-C does: through every `finally`, so temporary files
    are removed and nothing half-written stays behind (exit status 143)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with terminate_cleanly():
            reuse_freed_memory()  # torch's temporaries stay mapped between batches
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
