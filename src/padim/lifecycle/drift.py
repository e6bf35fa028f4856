"""Drift: is the line still the line the model was calibrated on?

`DriftMonitor` keeps the last `window` scores of a served model and compares their median with
the model's held-out good scores (their 95 % quantile, from the fit, in the model file): the
line has drifted when the median part of the window scores above what only 5 % of the held-out
good parts did. A lighting change, blur or a new batch of material moves every part's score,
so the median moves within a window; defects move only their own scores, so up to half a window
of defects does not raise the alarm by themselves, and an unshifted line would need half of a
window of good parts above the held-out 95 % quantile (about 1e-11 for 25 parts per check).
The statistic and the window were chosen by measurement (benchmarks/drift.py, docs/drift.md).
The alarm ends when the window's median is back halfway between the held-out median and the
quantile (hysteresis: a line sitting at the edge does not flap).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from padim import options
from padim.errors import PadimError

OK, DRIFT, WARMING = "ok", "drift", "warming"


@dataclass(frozen=True)
class Reference:
    """The calibration a line is compared with: the held-out good scores' median and upper
    quantile (`good_score_summary` of a model file's info)."""

    median: float
    upper: float  # the held-out good scores' 95 % quantile

    @property
    def clear_level(self) -> float:
        """An alarm ends when the window's median is back under this: halfway between the
        held-out median and the 95 % quantile (no flapping at the edge)."""
        return (self.median + self.upper) / 2

    @classmethod
    def of_info(cls, info: dict[str, Any]) -> Reference | None:
        """From a model's info (None when it has no held-out summary)."""
        summary = info.get("good_score_summary") or {}
        if "median" not in summary or "q95" not in summary:
            return None
        return cls(float(summary["median"]), float(summary["q95"]))


@dataclass
class DriftMonitor:
    """The last `window` scores against a `Reference` (see the module's docstring)."""

    reference: Reference
    window: int = options.DRIFT_WINDOW.default
    scores: deque[float] = field(init=False)
    state: str = field(init=False, default=WARMING)
    alarms: int = field(init=False, default=0)  # times the state went to drift
    seen: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.scores = deque(maxlen=self.window)

    def add(self, score: float) -> bool:
        """One more result; True when the state changed (to drift, or back to ok)."""
        self.scores.append(float(score))
        self.seen += 1
        if len(self.scores) < self.window:
            return False
        median = self.median()
        if median > self.reference.upper:
            new = DRIFT
        elif self.state == DRIFT and median > self.reference.clear_level:
            new = DRIFT  # hysteresis: an alarm ends back near the calibration, not at its edge
        else:
            new = OK
        changed = new != self.state and not (self.state == WARMING and new == OK)
        if new == DRIFT and self.state != DRIFT:
            self.alarms += 1
        self.state = new
        return changed

    def median(self) -> float:
        return float(np.median(np.fromiter(self.scores, float))) if self.scores else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """What /v1/health, the webhook and `padim drift` show."""
        return {
            "state": self.state,
            "window": self.window,
            "in_window": len(self.scores),
            "window_median": None if not self.scores else round(self.median(), 4),
            "reference_median": round(self.reference.median, 4),
            "reference_upper": round(self.reference.upper, 4),
            "clear_level": round(self.reference.clear_level, 4),
            "alarms": self.alarms,
            "results": self.seen,
        }


def replay(
    records: list[dict[str, Any]], window: int, registry: Any, model: Path | None = None
) -> dict[str, Any]:
    """`records` (oldest first) through a monitor per model version, each against that
    version's calibration (its file in the registry; `model` for records of no version)."""
    from padim.model.modelfile import read_model_config

    parts: list[dict[str, Any]] = []
    for version in sorted({r["version"] for r in records}, key=lambda v: (v is None, v or 0)):
        if version is not None:
            path = registry.version(records[0]["product"], version).path
        elif model is not None:
            path = model
        else:
            raise PadimError("records of no registry version: give --model FILE (the model)")
        reference = Reference.of_info(read_model_config(path).get("info") or {})
        if reference is None:
            raise PadimError(f"{path.name} keeps no held-out good scores to compare with")
        monitor = DriftMonitor(reference, window)
        alarms: list[dict[str, Any]] = []
        mine = [r for r in records if r["version"] == version]
        for r in mine:
            if monitor.add(r["score"]):
                if monitor.state == DRIFT:
                    alarms.append({"at": r["at"], "record": r["id"], "cleared_at": None})
                else:
                    alarms[-1]["cleared_at"] = r["at"]
        label = "(no version)" if version is None else f"v{version}"
        parts.append(
            {"version": version, "version_label": label, **monitor.to_dict(), "alarms": alarms}
        )
    return {"window": window, "versions": parts}
