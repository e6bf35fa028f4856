"""tables.md: the published layout, Avg over the categories run, '-' for the rest."""

import pytest

from padim.evaluation.published import CATEGORIES
from padim.evaluation.tables import metric_table, render_tables


def _result(backbone, category, image_auroc, perturbation=None, aupro=0.9):
    return {
        "backbone": backbone,
        "category": category,
        "perturbation": perturbation,
        "image_auroc": image_auroc,
        "pixel_auroc": 0.97,
        "aupro": aupro,
        "image_balanced_accuracy": 0.8,
        "image_f1": 0.9,
        "pixel_f1": None,
    }


RESULTS = [
    _result("resnet18", "bottle", 0.990),
    _result("resnet18", "zipper", 0.800),
    _result("resnet18", "bottle", 0.900, "rd-mvtec"),
    _result("resnet18", "zipper", 0.700, "rd-mvtec"),
]
META = {"size": 256, "crop": None, "seed": 0, "weights": "imagenet", "notes": ["a note"]}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_layout_and_average():
    lines = metric_table(RESULTS, "image_auroc", list(CATEGORIES), compare_published=False)
    header = _cells(lines[0])
    assert header[:3] == ["Model", "Avg", "Carpet"] and header[-1] == "Zipper"
    assert header[header.index("Metal Nut") - 1] == "Hazelnut" and len(header) == 17
    row = dict(zip(header, _cells(lines[2]), strict=True))
    assert row["Model"] == "resnet18" and row["Avg"] == "0.895"
    assert row["Bottle"] == "0.990" and row["Zipper"] == "0.800" and row["Carpet"] == "-"
    drop = dict(zip(header, _cells(lines[4]), strict=True))
    assert drop["Model"].startswith("Δ resnet18, rd-mvtec") and drop["Avg"] == "-0.095"


def test_compare_published_adds_rows_and_differences():
    lines = metric_table(RESULTS, "image_auroc", list(CATEGORIES), compare_published=True)
    header = _cells(lines[0])
    rows = {c[0]: dict(zip(header, c, strict=True)) for c in map(_cells, lines[2:])}
    pub = rows["anomalib ResNet-18 (published)"]
    assert pub["Avg"] == "0.891" and pub["Bottle"] == "0.994" and pub["Zipper"] == "0.780"
    diff = rows["Δ resnet18 − anomalib ResNet-18"]
    assert diff["Bottle"] == "-0.004" and diff["Zipper"] == "+0.020"
    assert diff["Avg"] == "+0.008†"
    assert rows["paper WR50-Rd550, Rd-MVTec (published)"]["Avg"] == "0.922"


def test_undefined_metric_is_a_dash_and_document_has_every_table():
    text = render_tables(RESULTS, META, compare_published=True)
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert [h.split()[1] for h in headings] == [
        "Image",
        "Pixel",
        "Image",
        "Image",
        "Pixel",
        "AUPRO",
        "Region",
    ]
    assert "balanced accuracy" in headings[2] and "F1" in headings[3] and "F1" in headings[4]
    pixel_f1 = text.split("## Pixel F1")[1].split("##")[0]
    ours = next(line for line in pixel_f1.splitlines() if line.startswith("| resnet18 |"))
    assert set(_cells(ours)[1:]) == {"-"}
    assert "resize 256x256, no crop" in text and "Note: a note" in text
    assert "| 0.798* |" in text  # balanced accuracy: mean of anomalib's ResNet-18 values


@pytest.mark.parametrize("crop,expected", [(224, "centre-crop 224x224"), (None, "no crop")])
def test_protocol_line(crop, expected):
    assert expected in render_tables(RESULTS, {**META, "crop": crop})
