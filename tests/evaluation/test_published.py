"""The project's copy of the published numbers matches ../shared/reference/published.md."""

import os
import re
from pathlib import Path

import pytest
from conftest import REPO

from padim.evaluation.published import CATEGORIES, PUBLISHED, published_rows, reference_for

SECTIONS = {
    "Image-level AUROC": "image_auroc",
    "Pixel-level AUROC": "pixel_auroc",
    "Balanced accuracy (image level, at the chosen threshold)": "image_balanced_accuracy",
    "Image F1 score (at the F1-optimal threshold)": "image_f1",
}
SOURCES = {"ResNet-18": "anomalib ResNet-18", "Wide ResNet-50": "anomalib Wide ResNet-50"}


def _reference_text() -> str:
    shared = Path(os.environ.get("PADIM_SHARED", REPO.parent / "shared"))
    path = shared / "reference" / "published.md"
    if not path.is_file():
        if os.environ.get("PADIM_REQUIRE_SHARED") == "1":
            pytest.fail(f"{path} missing (PADIM_REQUIRE_SHARED=1)")
        pytest.skip(f"{path} missing")
    return path.read_text()


def test_anomalib_rows_match_the_reference():
    metric, checked = None, 0
    for line in _reference_text().splitlines():
        metric = SECTIONS.get(line, metric)
        m = re.match(r"\| (ResNet-18|Wide ResNet-50)\s*\|(.*)\|$", line)
        if not (m and metric):
            continue
        cells = [c.strip() for c in m.group(2).split("|")]
        row = next(r for r in published_rows(metric) if r.source == SOURCES[m.group(1)])
        assert row.avg == (float(cells[0]) if cells[0] else None)
        assert row.values == {c: float(v) for c, v in zip(CATEGORIES, cells[1:], strict=True)}
        checked += 1
    assert checked == 8


def test_reimplementation_rows_match_the_reference():
    names = {
        "image_AUROC": "image_auroc",
        "image_F1": "image_f1",
        "pixel_AUROC": "pixel_auroc",
        "pixel_F1": "pixel_f1",
    }
    lines = _reference_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| Category |"))
    columns = [c.strip() for c in lines[header].strip("|").split("|")][1:]
    rows = {}
    for line in lines[header + 2 : header + 17]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(columns, map(float, cells[1:]), strict=True))
    assert set(rows) == set(CATEGORIES)
    for column, metric in names.items():
        row = next(r for r in published_rows(metric) if r.source == "re-implementation ResNet")
        assert row.values == {c: rows[c][column] for c in CATEGORIES}


def test_reference_row_per_backbone():
    assert reference_for("image_auroc", "resnet18").source == "anomalib ResNet-18"
    assert reference_for("image_auroc", "wide_resnet50_2").source == "anomalib Wide ResNet-50"
    assert reference_for("image_auroc", "efficientnet_lite0").source == "anomalib Wide ResNet-50"
    assert reference_for("aupro", "resnet18") is None  # the paper published averages only
    assert all(0 < (r.avg or 0.5) <= 1 for r in PUBLISHED)
