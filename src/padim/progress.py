"""Progress for long work: tqdm bars on stderr (only where stderr is a terminal), or a
`ProgressSink` that a caller gives instead (the studio's training jobs show it in a browser)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

# stage, done, total (None: unknown): called as work goes; it may raise to stop the work
ProgressSink = Callable[[str, int, int | None], None]


class SinkBar:
    """The part of a tqdm bar that fitting uses (update, close), reporting to a sink."""

    def __init__(self, sink: ProgressSink, total: int | None, desc: str) -> None:
        self.sink, self.total, self.desc, self.n = sink, total, desc, 0
        sink(desc, 0, total)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.sink(self.desc, self.n, self.total)

    def close(self) -> None:
        pass


def progress_bar(
    total: int | None, desc: str, unit: str = "img", enabled: bool | ProgressSink = True
) -> Any:
    """A tqdm bar that shows when `enabled` and stderr is a terminal (never in logs), or a bar
    reporting to `enabled` when it is a sink."""
    if callable(enabled):
        return SinkBar(enabled, total, desc)
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None if enabled else True)
