"""tables.md for `padim benchmark`: the published PaDiM tables' layout (rows = models; columns
Avg | Carpet | ... | Zipper), optionally with the published rows and the differences."""

from __future__ import annotations

from typing import Any

import numpy as np

from padim.evaluation.published import (
    CATEGORIES,
    TABLE_METRICS,
    TITLES,
    published_rows,
    reference_for,
)

MISSING = "-"


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _cell(value: float | None, signed: bool = False, mark: str = "") -> str:
    if value is None:
        return MISSING
    return (f"{value:+.3f}" if signed else f"{value:.3f}") + mark


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _wh(value: Any) -> str:
    if isinstance(value, int):
        return f"{value}x{value}"
    if isinstance(value, list | tuple):
        return f"{value[0]}x{value[1]}"
    return str(value)


def protocol(size: Any, crop: Any) -> str:
    """How the images were brought to the model's input (sizes are width x height)."""
    if crop is None:
        return f"resize {_wh(size)}, no crop"
    return f"resize {_wh(size)}, centre-crop {_wh(crop)}"


def _labels(results: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in results:
        seen.setdefault(run_label(r), None)
    return list(seen)


def run_label(r: dict[str, Any]) -> str:
    """backbone[, score mode][, shrinkage][, perturbation]: defaults are not named."""
    parts = [r["backbone"] + (f" @ {r['geometry']}" if r.get("geometry") else "")]
    if r.get("score_mode", "mahalanobis") != "mahalanobis":
        parts.append(r["score_mode"])
    if r.get("shrinkage", "none") != "none":
        parts.append(r["shrinkage"])
    if r.get("perturbation"):
        parts.append(r["perturbation"])
    return ", ".join(parts)


def _values(results: list[dict[str, Any]], label: str, metric: str) -> dict[str, float]:
    return {
        r["category"]: r[metric]
        for r in results
        if run_label(r) == label and r.get(metric) is not None
    }


def _row(
    name: str,
    values: dict[str, float],
    columns: list[str],
    avg: float | None,
    signed: bool = False,
    avg_mark: str = "",
) -> str:
    cells = [name, _cell(avg, signed, avg_mark if avg is not None else "")]
    cells += [_cell(values.get(c), signed) for c in columns]
    return _line(cells)


def metric_table(
    results: list[dict[str, Any]], metric: str, columns: list[str], compare_published: bool
) -> list[str]:
    """One metric's table as markdown lines."""
    lines = [
        _line(["Model", "Avg", *(TITLES.get(c, c) for c in columns)]),
        _line(["---"] * (len(columns) + 2)),
    ]
    labels = _labels(results)
    ours = {label: _values(results, label, metric) for label in labels}
    for label in labels:
        lines.append(_row(label, ours[label], columns, _mean(list(ours[label].values()))))
    for label in labels:  # robustness drop: perturbed minus aligned, as the paper reports it
        backbone, _, perturbation = label.partition(", ")
        if perturbation and backbone in ours:
            diff = {c: v - ours[backbone][c] for c, v in ours[label].items() if c in ours[backbone]}
            lines.append(
                _row(f"Δ {label} − aligned", diff, columns, _mean(list(diff.values())), signed=True)
            )
    if not compare_published:
        return lines
    for pub in published_rows(metric):
        avg, mark = pub.avg, ""
        if avg is None and pub.values:
            avg, mark = _mean(list(pub.values.values())), "*"
        lines.append(_row(f"{pub.source} (published)", pub.values, columns, avg, avg_mark=mark))
    for label in labels:
        backbone, _, perturbation = label.partition(", ")
        ref = None if perturbation else reference_for(metric, backbone)
        if ref is None:
            continue
        diff = {c: v - ref.values[c] for c, v in ours[label].items() if c in ref.values}
        lines.append(
            _row(
                f"Δ {label} − {ref.source}",
                diff,
                columns,
                _mean(list(diff.values())),
                signed=True,
                avg_mark="†",
            )
        )
    return lines


def render_tables(
    results: list[dict[str, Any]], meta: dict[str, Any], compare_published: bool = False
) -> str:
    """The whole tables.md."""
    ran = {r["category"] for r in results}
    columns = list(CATEGORIES) + sorted(ran - set(CATEGORIES))
    ran_known = [c for c in columns if c in ran]
    env = meta.get("environment", {})
    out = [
        "# PaDiM benchmark",
        "",
        f"Protocol: {protocol(meta['size'], meta['crop'])}; seed {meta['seed']}; backbone "
        f"weights: {meta['weights']}; padim {env.get('padim', '?')}, torch "
        f"{env.get('torch', '?')}, {env.get('torch_threads', '?')} threads.",
        f"Avg: mean over the {len(ran_known)} categories run ({', '.join(ran_known)}); "
        f"'{MISSING}': not run or not defined.",
    ]
    if meta.get("command"):
        out += ["", f"Command: `{meta['command']}`"]
    if compare_published:
        out += [
            "",
            "Published rows: anomalib's PaDiM README (resize 256x256, no crop), a category-wise "
            "ResNet re-implementation (256x256) and the paper (resize 256, crop 224; averages "
            "over the 15 categories only). * mean of the published per-category values (no "
            "average was published). Δ rows: ours minus the same backbone's published row "
            "(anomalib Wide ResNet-50 for backbones it did not publish); † the mean of the "
            "differences over the categories run, not the difference of the published Avg.",
        ]
    for note in meta.get("notes", []):
        out += ["", f"Note: {note}"]
    if any(r.get("geometry") for r in results):
        out += ["", "## Geometry: accuracy, time and memory", ""]
        out += geometry_table(results)
    for metric, title in TABLE_METRICS.items():
        out += ["", f"## {title}", ""]
        out += metric_table(results, metric, columns, compare_published)
    return "\n".join(out) + "\n"


GEOMETRY_COLUMNS = (
    ("input", "input (w x h)"),
    ("tiles", "tiles"),
    ("positions", "positions"),
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO"),
    ("region_recall", "region recall"),
    ("pixel_f1", "pixel F1"),
    ("fit_seconds", "fit s"),
    ("predict_ms_per_image", "predict ms/image"),
    ("peak_rss_fit_mib", "fit peak MiB"),
    ("model_mib", "model MiB"),
    ("cannot_align", "cannot align"),  # test images a model that aligns could not register
)


def geometry_table(results: list[dict[str, Any]]) -> list[str]:
    """One row per run: the geometry's accuracy beside what it costs (benchmark --geometry)."""
    head = ["run", "category", *(title for _, title in GEOMETRY_COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * len(GEOMETRY_COLUMNS)]
    for r in results:
        cells = [run_label(r), r["category"]]
        for key, _ in GEOMETRY_COLUMNS:
            value = r.get(key)
            if isinstance(value, float) and key in TABLE_METRICS:
                cells.append(f"{value:.3f}")
            else:
                cells.append(MISSING if value in (None, "") else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines
