"""Defect regions: the connected components (8-connectivity) of a predicted mask, each with its
bounding box, area, centroid and the anomaly map's peak and mean inside it.

Numpy only, so `padim predict` and the service find regions without SciPy (the torch-free
deployment installs numpy, Pillow and a runtime). The mask is read as runs of pixels per row;
runs that touch in neighbouring rows are joined by a vectorised union-find (min-label hooking
with pointer jumping), so the cost is in the number of runs, not of pixels. Labels are numbered
in raster order of each region's first pixel, as `scipy.ndimage.label` numbers them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Region:
    """One connected defect region, in pixels of the map it was found in."""

    x: int  # bounding box: left column, top row, width, height
    y: int
    width: int
    height: int
    area: int  # pixels
    centroid: tuple[float, float]  # (x, y)
    peak: float  # largest anomaly-map value inside
    mean: float  # mean anomaly-map value inside
    normalised_peak: float | None = None  # the peak on the model's [0, 1] scale, when known

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: box as [x, y, width, height], scores rounded to 6 digits."""
        out: dict[str, Any] = {
            "box": [self.x, self.y, self.width, self.height],
            "area": self.area,
            "centroid": [round(self.centroid[0], 2), round(self.centroid[1], 2)],
            "peak": round(self.peak, 6),
            "mean": round(self.mean, 6),
        }
        if self.normalised_peak is not None:
            out["normalised_peak"] = round(self.normalised_peak, 6)
        return out


@dataclass(frozen=True)
class Runs:
    """Horizontal runs of True pixels, in raster order: run i covers row rows[i], columns
    starts[i] to ends[i] - 1; label[i] (0..n-1) is its region."""

    rows: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    label: np.ndarray
    n: int

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts


def _row_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = mask.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    rows, starts = np.nonzero(step == 1)  # both in raster order, so they pair up
    _, ends = np.nonzero(step == -1)
    return rows.astype(np.int64), starts.astype(np.int64), ends.astype(np.int64)


def _touching_pairs(
    rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of runs in consecutive rows that touch (diagonals included)."""
    stride = width + 2  # row keys never mix: a column is at most `width`
    start_key, end_key = rows * stride + starts, rows * stride + ends
    above = (rows - 1) * stride
    first = np.searchsorted(end_key, above + starts, side="left")  # ends[a] >= starts[b]
    stop = np.searchsorted(start_key, above + ends, side="right")  # starts[a] <= ends[b]
    counts = np.clip(stop - first, 0, None)
    b = np.repeat(np.arange(rows.size), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(first, counts) + offsets, b


def _union(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each node's component root (the smallest index in its component)."""
    parent = np.arange(n)
    while a.size:
        ra, rb = parent[a], parent[b]
        if np.array_equal(ra, rb):
            break
        low = np.minimum(ra, rb)
        np.minimum.at(parent, ra, low)  # hook each root onto the smaller one
        np.minimum.at(parent, rb, low)
        while True:  # pointer jumping until every node points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


def mask_runs(mask: np.ndarray) -> Runs:
    """The runs of a 2-D mask and the region each belongs to."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {mask.shape}")
    rows, starts, ends = _row_runs(mask)
    roots = _union(rows.size, *_touching_pairs(rows, starts, ends, mask.shape[1]))
    _, label = np.unique(roots, return_inverse=True)  # roots ascend in raster order
    return Runs(rows, starts, ends, label.reshape(-1), int(label.max(initial=-1)) + 1)


def label_mask(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Region labels (H, W) int32, 0 outside, 1..n in raster order; and n."""
    mask = np.asarray(mask, dtype=bool)
    runs = mask_runs(mask)
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels.flat[np.flatnonzero(mask)] = np.repeat(runs.label + 1, runs.lengths)
    return labels, runs.n


def find_regions(
    anomaly_map: np.ndarray,
    threshold: float,
    min_area: int = 0,
    normalise: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Region]:
    """The regions of `anomaly_map > threshold` with at least `min_area` pixels, largest peak
    first; `normalise` (a `ScoreScale`) adds each peak on the normalised scale."""
    amap = np.asarray(anomaly_map)
    mask = amap > threshold
    runs = mask_runs(mask)
    if runs.n == 0:
        return []
    n, label, lengths = runs.n, runs.label, runs.lengths
    area = np.bincount(label, lengths, minlength=n).astype(np.int64)
    x0 = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(x0, label, runs.starts)
    x1 = np.zeros(n, dtype=np.int64)
    np.maximum.at(x1, label, runs.ends)
    y0 = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(y0, label, runs.rows)
    y1 = np.zeros(n, dtype=np.int64)
    np.maximum.at(y1, label, runs.rows)
    cx = np.bincount(label, (runs.starts + runs.ends - 1) * lengths / 2, minlength=n) / area
    cy = np.bincount(label, runs.rows * lengths, minlength=n) / area
    values = amap.ravel()[np.flatnonzero(mask)].astype(np.float64)
    pixel_label = np.repeat(label, lengths)
    mean = np.bincount(pixel_label, values, minlength=n) / area
    peak = np.full(n, -np.inf)
    np.maximum.at(peak, pixel_label, values)
    keep = np.flatnonzero(area >= min_area)
    normalised = None if normalise is None else np.asarray(normalise(peak[keep]), np.float64)
    regions = [
        Region(
            int(x0[i]),
            int(y0[i]),
            int(x1[i] - x0[i]),
            int(y1[i] - y0[i] + 1),
            int(area[i]),
            (float(cx[i]), float(cy[i])),
            float(peak[i]),
            float(mean[i]),
            None if normalised is None else float(normalised[j]),
        )
        for j, i in enumerate(keep)
    ]
    return sorted(regions, key=lambda r: -r.peak)


def moved(
    regions: list[Region], offset: tuple[int, int], factor: tuple[float, float]
) -> list[Region]:
    """Regions of a map placed at `offset` (x, y) on a canvas that is then resized by `factor`
    (sx, sy): boxes cover every canvas pixel their pixels reach, areas scale by sx * sy."""
    (dx, dy), (sx, sy) = offset, factor
    out = []
    for r in regions:
        x0, y0 = math.floor((r.x + dx) * sx), math.floor((r.y + dy) * sy)
        x1 = math.ceil((r.x + r.width + dx) * sx)
        y1 = math.ceil((r.y + r.height + dy) * sy)
        cx, cy = r.centroid
        out.append(
            replace(
                r,
                x=x0,
                y=y0,
                width=max(x1 - x0, 1),
                height=max(y1 - y0, 1),
                area=max(round(r.area * sx * sy), 1),
                centroid=((cx + dx + 0.5) * sx - 0.5, (cy + dy + 0.5) * sy - 0.5),
            )
        )
    return out
