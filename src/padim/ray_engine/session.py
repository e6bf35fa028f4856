"""Ray sessions: connect to a cluster (or start a local Ray), fail fast on an unreachable one,
and turn task failures into one line for the user."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

from padim.errors import PadimError


def require_ray():
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise PadimError("the Ray engine needs Ray: pip install 'padim[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to the cluster at `address` ('auto': the local node's), or start a local Ray with
    `num_cpus` CPUs; shut it down afterwards. An already initialised Ray (Python API callers)
    is used as it is and left running."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        check_reachable(address)
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": True,
    }
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise PadimError(f"cannot start or reach {where}: {str(exc).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or address == "auto":
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise PadimError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}"
        ) from None


def cluster_cpus() -> int:
    ray = require_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def unwrap_error(exc: BaseException, what: str) -> PadimError:
    """One line for the driver: a task's PadimError as it was raised (Ray wraps it, sometimes
    twice: the task's error, then Ray Data's user-code error), anything else as `what` failed
    with the innermost error's first line."""
    current: BaseException = exc
    for _ in range(8):
        cause = getattr(current, "cause", None)
        if isinstance(cause, PadimError) or (cause is None and isinstance(current, PadimError)):
            return PadimError(str(cause or current).strip().splitlines()[0])
        nxt = cause if isinstance(cause, BaseException) else current.__cause__
        if nxt is None:
            break
        current = nxt
    first = (str(current).strip().splitlines() or [""])[0][:300]
    return PadimError(f"{what}: {type(current).__name__}: {first}")
