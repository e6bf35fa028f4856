"""Progress bars for long work: on stderr, and only where stderr is a terminal."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "img", enabled: bool = True) -> tqdm:
    """A tqdm bar that shows when `enabled` and stderr is a terminal (never in logs)."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None if enabled else True)
