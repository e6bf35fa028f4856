"""Process memory: peak resident memory (RSS) over a block of work, for benchmark reports, and
giving freed heap memory back to the operating system."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import resource
import sys
from collections.abc import Callable
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes, or None where there is none."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def available_bytes() -> int | None:
    """Memory the system can give this process now (MemAvailable of /proc/meminfo), or None
    where that is not known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0); False if impossible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def process_peak_bytes() -> int:
    """Peak RSS since the process started (getrusage: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakRSS(contextlib.AbstractContextManager):
    """`with PeakRSS() as m: ...` then `m.peak_bytes`: the block's peak RSS where the kernel
    lets us reset the high-water mark (`m.exact`), else the process peak so far."""

    def __init__(self) -> None:
        self.exact = False
        self.peak_bytes = 0
        self.start_bytes = 0  # RSS when the block began

    def __enter__(self) -> PeakRSS:
        self.start_bytes = _status_bytes("VmRSS") or 0
        self.exact = _reset_hwm()
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _status_bytes("VmHWM") if self.exact else None
        self.peak_bytes = hwm if hwm is not None else process_peak_bytes()
        self.exact = hwm is not None


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps freed blocks under 32 MB mapped, so
    memory released chunk by chunk would otherwise still count as resident). No-op elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does) for a long-running multi-threaded
    process; False where there is no glibc."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def reuse_freed_memory() -> bool:
    """Keep freed blocks of up to MMAP_THRESHOLD in the heap for the next call (glibc returns
    them to the OS by default: every batch then page-faults its temporaries in again, 3,000
    faults and a quarter of the time of a full-covariance forward pass at batch 1 on a 2-core
    VM, more where faults cost more; onnxruntime and OpenVINO reuse an arena instead). Freed
    memory above TRIM_THRESHOLD at the heap's top still goes back; `release_free_memory`
    returns the rest on demand. False where there is no glibc."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


M_ARENA_MAX = -8  # glibc's mallopt parameter numbers
M_MMAP_THRESHOLD = -3
M_TRIM_THRESHOLD = -1
MMAP_THRESHOLD = 32 << 20  # bytes: larger blocks (model tensors) are mapped and unmapped
TRIM_THRESHOLD = 128 << 20  # bytes of free heap top kept before it is returned


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once; None where there is no glibc."""
    libc = _libc()
    return getattr(libc, "malloc_trim", None) if libc is not None else None
