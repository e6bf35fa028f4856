"""Pictures people look at: heat maps, overlays with the predicted mask outline, report grids."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from padim.modelfile import write_atomic


def colour_scale(threshold: float) -> tuple[float, float]:
    """A fixed colour range around the threshold, so colours mean the same on every image:
    the threshold sits mid-scale, red is clearly above it."""
    t = max(float(threshold), 1e-6)
    return 0.5 * t, 1.5 * t


def heatmap_rgb(amap: np.ndarray, vmin: float, vmax: float, cmap: str = "jet") -> np.ndarray:
    """Anomaly map (H, W) -> uint8 RGB picture with a matplotlib colour map."""
    from matplotlib import colormaps

    norm = np.clip((amap - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    return (colormaps[cmap](norm)[..., :3] * 255).astype(np.uint8)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean mask (4-neighbourhood)."""
    m = mask.astype(bool)
    interior = m.copy()
    interior[1:, :] &= m[:-1, :]
    interior[:-1, :] &= m[1:, :]
    interior[:, 1:] &= m[:, :-1]
    interior[:, :-1] &= m[:, 1:]
    return m & ~interior


def overlay(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None,
            vmin: float, vmax: float, alpha: float = 0.45) -> np.ndarray:
    """Heat map blended over the image, with the predicted mask outlined in white."""
    heat = heatmap_rgb(amap, vmin, vmax).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * heat
    out = out.clip(0, 255).astype(np.uint8)
    if mask is not None:
        out[mask_outline(mask)] = (255, 255, 255)
    return out


PICTURES = ("overlay", "heatmap", "mask")


def render_pictures(image: np.ndarray, amap: np.ndarray, threshold: float, kinds: Sequence[str],
                    colour_threshold: float | None = None) -> dict[str, np.ndarray]:
    """A scored image's pictures as arrays, by kind: overlay, heatmap, mask (amap > threshold)
    and input. `image` is the (3, S, S) model input in [0, 1], `amap` its (S, S) anomaly map;
    colours are scaled around `colour_threshold` (default: `threshold`)."""
    from padim.images import to_picture

    vmin, vmax = colour_scale(threshold if colour_threshold is None else colour_threshold)
    mask = amap > threshold
    picture = to_picture(image) if {"overlay", "input"} & set(kinds) else None
    make = {"overlay": lambda: overlay(picture, amap, mask, vmin, vmax),
            "heatmap": lambda: heatmap_rgb(amap, vmin, vmax), "mask": lambda: mask,
            "input": lambda: picture}
    return {kind: make[kind]() for kind in kinds}


def save_pictures(folder: Path, name: str, image: np.ndarray, amap: np.ndarray,
                  threshold: float, kinds: Sequence[str] = PICTURES) -> dict[str, str]:
    """`render_pictures`, each written atomically as folder/<name>_<kind>.png; returns the file
    names by kind."""
    names = {}
    for kind, picture in render_pictures(image, amap, threshold, kinds).items():
        names[kind] = f"{name}_{kind}.png"
        save_png(folder / names[kind], picture)
    return names


def png_bytes(array: np.ndarray, compress_level: int = 6) -> bytes:
    """An RGB or greyscale/boolean array encoded as PNG."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def save_png(path: str | Path, array: np.ndarray) -> None:
    """Write an RGB or greyscale/boolean array as PNG, atomically."""
    data = png_bytes(array)
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def draw_results_grid(fig, rows: Sequence[dict], threshold: float) -> None:
    """Draw into a matplotlib figure or subfigure, one row per image: image | ground truth
    (if any) | heat map | overlay + predicted mask.

    Each row dict has `image` (H, W, 3 uint8), `map` (H, W), optional `truth` (H, W bool),
    `score`, `label` (true label or None) and `name`.
    """
    has_truth = _has_truth(rows)
    cols = ["image"] + (["ground truth"] if has_truth else []) + ["heat map", "overlay + mask"]
    vmin, vmax = colour_scale(threshold)
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for i, row in enumerate(rows):
        panels = [row["image"]]
        if has_truth:
            truth = row.get("truth")
            panels.append(truth if truth is not None else np.zeros(row["map"].shape, bool))
        panels.append(heatmap_rgb(row["map"], vmin, vmax))
        panels.append(overlay(row["image"], row["map"], row["map"] > threshold, vmin, vmax))
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
        verdict = "ANOMALOUS" if row["score"] > threshold else "good"
        truth_label = row.get("label")
        truth = "" if truth_label is None else f", truth {'anomalous' if truth_label else 'good'}"
        axes[i, 0].set_xlabel(f"{row['name']}\nscore {row['score']:.1f}: {verdict}{truth}",
                              fontsize=7)


def _has_truth(rows: Sequence[dict]) -> bool:
    return any(r.get("truth") is not None for r in rows)


def grid_columns(rows: Sequence[dict]) -> int:
    return 4 if _has_truth(rows) else 3


def results_grid(
    rows: Sequence[dict], threshold: float, path: str | Path, title: str = ""
) -> None:
    """A PNG of `draw_results_grid` (see there for the row format)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(2.4 * grid_columns(rows), 2.5 * len(rows)))
    draw_results_grid(fig, rows, threshold)
    fig.tight_layout()
    if title:
        fig.suptitle(f"{title}  (threshold {threshold:.1f})", fontsize=10, y=1.0)
    save_figure(fig, path)
    plt.close(fig)
