"""Report figures (matplotlib, `pip install 'padim[report]'`): result grids of test images with
ground truth, heat map and predicted mask; ROC curves; per-defect AUROC bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from padim.curves import Ranking
from padim.data.pictures import heatmap_rgb, overlay
from padim.evaluation.evaluate import EvaluationRun, example_rows
from padim.evaluation.metrics import format_metric
from padim.evaluation.tables import run_label
from padim.extras import require
from padim.files import write_atomic
from padim.normalise import ScoreScale


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or a one-line install hint."""
    matplotlib = require("matplotlib", "report", "drawing figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight"))


def draw_results_grid(
    fig, rows: Sequence[dict], threshold: float, scale: ScoreScale | None = None
) -> None:
    """Draw into a matplotlib figure or subfigure, one row per image: image | ground truth
    (if any) | heat map | overlay + predicted mask.

    Each row dict has `image` (H, W, 3 uint8), `map` (H, W), optional `truth` (H, W bool),
    `score`, `label` (true label or None) and `name`.
    """
    has_truth = _has_truth(rows)
    cols = ["image"] + (["ground truth"] if has_truth else []) + ["heat map", "overlay + mask"]
    scale = scale if scale is not None else ScoreScale.of(threshold, None)
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for i, row in enumerate(rows):
        panels = [row["image"]]
        if has_truth:
            truth = row.get("truth")
            panels.append(truth if truth is not None else np.zeros(row["map"].shape, bool))
        colours = scale(row["map"])  # the model's fixed normalised scale, as predict colours
        panels.append(heatmap_rgb(colours, 0.0, 1.0))
        panels.append(overlay(row["image"], colours, row["map"] > threshold, 0.0, 1.0))
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
        axes[i, 0].set_xlabel(
            f"{row['name']}\nscore {row['score']:.1f}: {verdict}{truth}", fontsize=7
        )


def _has_truth(rows: Sequence[dict]) -> bool:
    return any(r.get("truth") is not None for r in rows)


def grid_columns(rows: Sequence[dict]) -> int:
    return 4 if _has_truth(rows) else 3


def results_grid(
    rows: Sequence[dict],
    threshold: float,
    path: str | Path,
    title: str = "",
    scale: ScoreScale | None = None,
) -> None:
    """A PNG of `draw_results_grid` (see there for the row format)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(2.4 * grid_columns(rows), 2.5 * len(rows)))
    draw_results_grid(fig, rows, threshold, scale)
    fig.tight_layout()
    if title:
        fig.suptitle(f"{title}  (threshold {threshold:.1f})", fontsize=10, y=1.0)
    save_figure(fig, path)
    plt.close(fig)


def roc_curves(run: EvaluationRun) -> dict[str, Any]:
    """Image and pixel ROC curves (thinned to what a plot needs) with their AUROCs."""
    out: dict[str, Any] = {}
    labels = run.labels
    if 0 < labels.sum() < len(labels):
        fpr, tpr = Ranking(labels, run.scores).roc()
        out["image"] = (fpr, tpr, run.metrics["image_auroc"])
    if run.masks is not None and run.masks.any() and not run.masks.all():
        fpr, tpr = Ranking(run.masks, run.maps).roc()
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 2000)).round().astype(int))
        out["pixel"] = (fpr[keep], tpr[keep], run.metrics["pixel_auroc"])
    return out


def _plot_roc(ax, curves: list[tuple[str, dict]], kind: str) -> None:
    for label, c in curves:
        if kind in c:
            fpr, tpr, auc = c[kind]
            ax.plot(fpr, tpr, lw=1.5, label=f"{label} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate", fontsize=8)
    ax.set_ylabel("true positive rate", fontsize=8)
    ax.set_title(f"{kind} ROC", fontsize=9)
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")


def run_figure(run: EvaluationRun, row: dict[str, Any], path: Path) -> None:
    """ROC curves and per-defect AUROC on top, example images with ground truth, heat map and
    predicted mask below."""
    plt = _pyplot()
    rows = example_rows(run, per_class=3)
    width = max(9.0, 2.4 * grid_columns(rows))
    fig = plt.figure(figsize=(width, 3.4 + 2.5 * len(rows)), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.4, 2.5 * len(rows)])
    axes = top.subplots(1, 3)
    curves = [(run_label(row), roc_curves(run))]
    _plot_roc(axes[0], curves, "image")
    _plot_roc(axes[1], curves, "pixel")
    per_type = row.get("per_type_image_auroc") or {}
    names = [k for k, v in per_type.items() if v is not None]
    bars = axes[2].barh(names, [per_type[k] for k in names], height=0.6, color="tab:blue")
    axes[2].bar_label(bars, fmt="%.3f", fontsize=7)
    axes[2].set_xlim(min([0.5, *[per_type[k] for k in names]]), 1.0)
    axes[2].set_title("image AUROC per defect type", fontsize=9)
    axes[2].tick_params(labelsize=7)
    axes[2].set_xlabel("AUROC against the good test images", fontsize=8)
    top.suptitle(
        f"{row['category']}: {run_label(row)} (image AUROC {format_metric(row['image_auroc'])}, "
        f"pixel AUROC {format_metric(row['pixel_auroc'])}, AUPRO {format_metric(row['aupro'])}, "
        f"threshold {run.threshold:.1f})",
        fontsize=10,
    )
    draw_results_grid(bottom, rows, run.threshold, run.scale)
    save_figure(fig, path)
    plt.close(fig)


def roc_figure(category: str, curves: list[tuple[str, dict]], path: Path) -> None:
    """Every run of one category on the same image and pixel ROC axes."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    _plot_roc(axes[0], curves, "image")
    _plot_roc(axes[1], curves, "pixel")
    fig.suptitle(f"{category}: ROC curves", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def report_figure(run: EvaluationRun, path, per_class: int = 3) -> None:
    """A grid of test images with ground truth, heat map and predicted mask."""
    results_grid(
        example_rows(run, per_class), run.threshold, path, title="padim results", scale=run.scale
    )
