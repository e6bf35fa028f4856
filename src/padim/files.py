"""Writing files so that a crash never leaves a half-written one: a temporary file beside the
target, renamed onto it only when the write succeeded, with the usual permissions; and output
paths checked before any work, so nothing but a regular file is ever replaced."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from padim.errors import PadimError


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (what `sha256sum` prints), read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_file_mode() -> int:
    """The permissions a plain `open()` would give a new file (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def check_output_file(path: str | Path, what: str = "--out") -> Path:
    """`path` as a file to (re)write: refused if something other than a regular file is there
    (a folder, a device such as /dev/full, a FIFO, a socket), which a rename would replace."""
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise PadimError(f"{what} {path} exists and is {kind}: refusing to replace it")
    if path.parent.exists() and not path.parent.is_dir():
        raise PadimError(f"{what} {path}: {path.parent} is not a folder")
    return path


def check_output_folder(
    path: str | Path, inputs: Iterable[str | Path] = (), what: str = "--out"
) -> Path:
    """`path` as an output folder: refused if it exists as something else, or if it lies inside
    one of the input folders (a later run would read its own outputs as inputs)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PadimError(f"{what} {path} exists and is not a folder")
    resolved = path.resolve()
    for source in inputs:
        folder = Path(source).resolve()
        if Path(source).is_dir() and (resolved == folder or folder in resolved.parents):
            raise PadimError(
                f"{what} {path} is inside the input folder {source}: its pictures "
                "would be read as inputs next time; choose a folder outside it"
            )
    return path


STALE_AFTER_S = 60.0  # a temporary file this old whose writer is gone was left by a kill


_SWEPT: set[Path] = set()  # folders this process has swept already


def remove_stale_temporaries(folder: Path) -> None:
    """Remove, once per folder and process, the temporary files (`.NAME.PID.XXXX.tmp`) of
    earlier writes whose process is gone (SIGKILL, power loss: no `finally` ran) and that are
    older than STALE_AFTER_S. Once: a folder of many pictures, each written atomically, must not
    be listed again for every one of them."""
    if folder in _SWEPT:
        return
    _SWEPT.add(folder)
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            parts = entry.name.removesuffix(".tmp").rsplit(".", 2)
            if not (entry.name.startswith(".") and entry.name.endswith(".tmp") and len(parts) == 3):
                continue
            pid = parts[1]
            with contextlib.suppress(OSError, ValueError):
                old = now - entry.stat().st_mtime > STALE_AFTER_S
                if pid.isdigit() and old and not _alive(int(pid)):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.
    Only a regular file is ever replaced (`check_output_file`)."""
    path = check_output_file(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent.resolve())
    prefix = f".{path.name}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call `write(tmp)` on a temporary path, then move it onto `path`."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))
