"""Published PaDiM results on MVTec AD, the project's own copy, for `benchmark --compare-published`.

Sources: anomalib's PaDiM README (seed 42, 256x256 no crop), a category-wise ResNet
re-implementation (256x256), and the paper (Defard et al. 2020, 256 -> 224 crop), which gives
averages only. Values are fractions; "" marks a value that was not published.
"""

from __future__ import annotations

from dataclasses import dataclass

# The published tables' column order (after Avg) and their column titles.
CATEGORIES = (
    "carpet",
    "grid",
    "leather",
    "tile",
    "wood",
    "bottle",
    "cable",
    "capsule",
    "hazelnut",
    "metal_nut",
    "pill",
    "screw",
    "toothbrush",
    "transistor",
    "zipper",
)
TITLES = {c: c.replace("_", " ").title() for c in CATEGORIES}

# Metric key (as in results.json) -> table heading.
TABLE_METRICS = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "image_balanced_accuracy": "Image balanced accuracy (at the model's threshold)",
    "image_f1": "Image F1 (F1-optimal threshold)",
    "pixel_f1": "Pixel F1 (F1-optimal threshold)",
    "aupro": "AUPRO (FPR <= 0.3)",
    "region_recall": "Region recall (defect regions at least 30 % covered at the threshold)",
}


@dataclass(frozen=True)
class PublishedRow:
    """One published row: `values` per category, `avg` as published (None: not published)."""

    source: str
    metric: str
    avg: float | None
    values: dict[str, float]
    backbone: str | None = None  # our registry name for the same backbone, if any
    perturbation: str | None = None


def _row(source: str, metric: str, text: str, backbone: str | None = None) -> PublishedRow:
    """Parse 'avg | carpet | ... | zipper' in the published column order."""
    cells = [c.strip() for c in text.split("|")]
    if len(cells) != 1 + len(CATEGORIES):
        raise ValueError(f"{source} {metric}: expected {1 + len(CATEGORIES)} cells")
    values = {c: float(v) for c, v in zip(CATEGORIES, cells[1:], strict=True) if v}
    return PublishedRow(source, metric, float(cells[0]) if cells[0] else None, values, backbone)


_A18 = "anomalib ResNet-18"
_A50 = "anomalib Wide ResNet-50"
_RE = "re-implementation ResNet"

PUBLISHED: tuple[PublishedRow, ...] = (
    # anomalib README: Avg | Carpet | Grid | Leather | Tile | Wood | Bottle | Cable | Capsule |
    # Hazelnut | Metal Nut | Pill | Screw | Toothbrush | Transistor | Zipper
    _row(
        _A18,
        "image_auroc",
        "0.891 | 0.945 | 0.857 | 0.982 | 0.950 | 0.976 | 0.994 | 0.844 | "
        "0.901 | 0.750 | 0.961 | 0.863 | 0.759 | 0.889 | 0.920 | 0.780",
        "resnet18",
    ),
    _row(
        _A50,
        "image_auroc",
        "0.950 | 0.995 | 0.942 | 1.0 | 0.974 | 0.993 | 0.999 | 0.878 | "
        "0.927 | 0.964 | 0.989 | 0.939 | 0.845 | 0.942 | 0.976 | 0.882",
        "wide_resnet50_2",
    ),
    _row(
        _A18,
        "pixel_auroc",
        "0.968 | 0.984 | 0.918 | 0.994 | 0.934 | 0.947 | 0.983 | 0.965 | "
        "0.984 | 0.978 | 0.970 | 0.957 | 0.978 | 0.988 | 0.968 | 0.979",
        "resnet18",
    ),
    _row(
        _A50,
        "pixel_auroc",
        "0.979 | 0.991 | 0.970 | 0.993 | 0.955 | 0.957 | 0.985 | 0.970 | "
        "0.988 | 0.985 | 0.982 | 0.966 | 0.988 | 0.991 | 0.976 | 0.986",
        "wide_resnet50_2",
    ),
    _row(
        _A18,
        "image_balanced_accuracy",
        " | 0.896 | 0.736 | 0.963 | 0.889 | 0.860 | 0.942 | "
        "0.763 | 0.804 | 0.668 | 0.883 | 0.662 | 0.634 | 0.792 | 0.829 | 0.656",
        "resnet18",
    ),
    _row(
        _A50,
        "image_balanced_accuracy",
        " | 0.977 | 0.870 | 1.0 | 0.903 | 0.965 | 0.975 | "
        "0.787 | 0.913 | 0.904 | 0.961 | 0.868 | 0.703 | 0.875 | 0.929 | 0.831",
        "wide_resnet50_2",
    ),
    _row(
        _A18,
        "image_f1",
        "0.916 | 0.930 | 0.893 | 0.984 | 0.934 | 0.952 | 0.976 | 0.858 | "
        "0.960 | 0.836 | 0.974 | 0.932 | 0.879 | 0.923 | 0.796 | 0.915",
        "resnet18",
    ),
    _row(
        _A50,
        "image_f1",
        "0.951 | 0.989 | 0.930 | 1.0 | 0.960 | 0.983 | 0.992 | 0.856 | "
        "0.982 | 0.937 | 0.978 | 0.946 | 0.895 | 0.952 | 0.914 | 0.947",
        "wide_resnet50_2",
    ),
    # Category-wise re-implementation (ResNet, 256x256); no average published.
    _row(
        _RE,
        "image_auroc",
        " | 0.98 | 0.80 | 1.00 | 0.95 | 0.98 | 1.00 | 0.82 | 0.91 | 0.73 | "
        "0.96 | 0.90 | 0.78 | 0.87 | 0.87 | 0.90",
    ),
    _row(
        _RE,
        "image_f1",
        " | 0.96 | 0.86 | 0.99 | 0.92 | 0.95 | 0.98 | 0.82 | 0.95 | 0.81 | "
        "0.95 | 0.94 | 0.88 | 0.92 | 0.76 | 0.93",
    ),
    _row(
        _RE,
        "pixel_auroc",
        " | 0.99 | 0.94 | 0.99 | 0.91 | 0.93 | 0.98 | 0.95 | 0.98 | 0.97 | "
        "0.95 | 0.96 | 0.98 | 0.99 | 0.97 | 0.97",
    ),
    _row(
        _RE,
        "pixel_f1",
        " | 0.56 | 0.28 | 0.34 | 0.48 | 0.42 | 0.70 | 0.40 | 0.43 | 0.43 | "
        "0.68 | 0.55 | 0.18 | 0.53 | 0.61 | 0.42",
    ),
    # The paper (256 -> 224 crop): averages over the 15 categories only.
    PublishedRow("paper R18-Rd100", "pixel_auroc", 0.967, {}, "resnet18"),
    PublishedRow("paper WR50-Rd550", "pixel_auroc", 0.975, {}, "wide_resnet50_2"),
    PublishedRow("paper R18-Rd100", "aupro", 0.901, {}, "resnet18"),
    PublishedRow("paper WR50-Rd550", "aupro", 0.921, {}, "wide_resnet50_2"),
    PublishedRow("paper WR50-Rd550", "image_auroc", 0.953, {}, "wide_resnet50_2"),
    PublishedRow("paper EfficientNet-B5", "image_auroc", 0.979, {}),
    PublishedRow(
        "paper WR50-Rd550, Rd-MVTec", "image_auroc", 0.922, {}, "wide_resnet50_2", "rd-mvtec"
    ),
)

# Which published row our backbones are compared with when none matches them: the strongest
# PaDiM row with per-category values (anomalib's Wide ResNet-50).
FALLBACK_SOURCE = _A50


def published_rows(metric: str) -> list[PublishedRow]:
    return [r for r in PUBLISHED if r.metric == metric]


def reference_for(metric: str, backbone: str) -> PublishedRow | None:
    """The per-category published row our `backbone` is compared with for `metric`: the same
    backbone in anomalib when published, else anomalib's Wide ResNet-50."""
    rows = [r for r in published_rows(metric) if r.values]
    for r in rows:
        if r.backbone == backbone:
            return r
    return next((r for r in rows if r.source == FALLBACK_SOURCE), None)
