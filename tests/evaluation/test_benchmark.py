"""`padim benchmark` on a tiny synthetic MVTec root: every report file, consistent numbers."""

import csv
import json

import pytest
from conftest import SIZE, make_category
from PIL import Image

from padim.cli import main

FAST = ["--size", str(SIZE), "--crop", "none", "--quiet", "--device", "cpu", "--batch-size", "8"]


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvtec")
    make_category(root / "bottle", n_train=10, seed=1)
    make_category(root / "screw", n_train=10, seed=2)
    (root / "not_a_category").mkdir()
    return root


@pytest.fixture(scope="module")
def report(mvtec_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report"
    code = main(
        [
            "benchmark",
            "--root",
            str(mvtec_root),
            "--out",
            str(out),
            "--perturb",
            "rd-mvtec",
            "rd-mvtec-test",
            "--compare-published",
            "--keep-models",
            "--categories",
            "bottle",
            "screw",
            "carpet",
            *FAST,
        ]
    )
    assert code == 0
    return out


@pytest.mark.slow
def test_every_report_file(report):
    results = json.loads((report / "results.json").read_text())
    rows = results["results"]
    assert [(r["category"], r["perturbation"]) for r in rows] == [
        (c, p) for c in ("bottle", "screw") for p in (None, "rd-mvtec", "rd-mvtec-test")
    ]
    assert any("carpet" in n for n in results["meta"]["notes"])
    for r in rows:
        for key in (
            "image_auroc",
            "pixel_auroc",
            "aupro",
            "image_f1",
            "pixel_f1",
            "image_balanced_accuracy",
        ):
            assert 0 <= r[key] <= 1, key
        assert r["fit_seconds"] > 0 and r["predict_ms_per_image"] > 0
        assert r["peak_rss_fit_mib"] > 50 and r["peak_rss_predict_mib"] > 50
        assert r["model_mib"] > 1 and r["n_train"] == 10 and r["n_test"] == 10
    assert rows[0]["image_auroc"] > 0.9 and rows[0]["pixel_auroc"] > 0.9

    with (report / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and float(table[0]["image_auroc"]) == pytest.approx(
        rows[0]["image_auroc"]
    )

    tables = (report / "tables.md").read_text()
    assert tables.count("| Model | Avg | Carpet | Grid |") == 7  # one table per metric
    assert "| efficientnet_lite0, rd-mvtec |" in tables
    assert "| Δ efficientnet_lite0, rd-mvtec-test − aligned |" in tables
    assert "anomalib Wide ResNet-50 (published)" in tables
    assert "Δ efficientnet_lite0 − anomalib Wide ResNet-50" in tables
    assert "category 'carpet' not found" in tables

    figures = sorted(p.name for p in (report / "figures").iterdir())
    assert figures == sorted(
        [
            f"{c}__efficientnet_lite0{p}.png"
            for c in ("bottle", "screw")
            for p in ("", "__rd-mvtec", "__rd-mvtec-test")
        ]
        + ["bottle_roc.png", "screw_roc.png"]
    )
    assert Image.open(report / "figures" / "bottle__efficientnet_lite0.png").size[1] > 800


def test_results_agree_with_padim_evaluate(report, mvtec_root, tmp_path):
    """The benchmark's numbers are what `padim evaluate` reports for the same model file."""
    rows = json.loads((report / "results.json").read_text())["results"]
    models = report / "models"
    aligned = models / "bottle__efficientnet_lite0.safetensors"
    paper = models / "bottle__efficientnet_lite0__rd-mvtec.safetensors"
    assert aligned.stat().st_size == pytest.approx(rows[0]["model_mib"] * 2**20, rel=1e-3)
    assert sorted(p.name for p in models.iterdir()) == sorted(
        f"{c}__efficientnet_lite0{p}.safetensors"
        for c in ("bottle", "screw")
        for p in ("", "__rd-mvtec")
    )
    # rd-mvtec: the model fitted on perturbed training images; rd-mvtec-test: the aligned one.
    for model, perturb, row in (
        (aligned, None, rows[0]),
        (paper, "rd-mvtec", rows[1]),
        (aligned, "rd-mvtec-test", rows[2]),
    ):
        metrics = tmp_path / "m.json"
        extra = ["--perturb", perturb] if perturb else []
        assert (
            main(
                [
                    "evaluate",
                    str(model),
                    str(mvtec_root / "bottle"),
                    "--json",
                    str(metrics),
                    "--quiet",
                    *extra,
                ]
            )
            == 0
        )
        got = json.loads(metrics.read_text())
        for key in ("image_auroc", "pixel_auroc", "aupro", "image_balanced_accuracy"):
            # the file holds float16 whitening matrices, the benchmark scored in float32
            assert got[key] == pytest.approx(row[key], abs=1e-3), (perturb, key)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--root", "/nonexistent/root"], "not a folder"),
        (["--root", "{empty}"], "no MVTec AD categories"),
        (["--root", "{root}", "--backbones", "vgg99"], "unknown backbone"),
        (["--root", "{root}", "--perturb", "blur"], "unknown perturbation"),
    ],
)
def test_bad_input_is_one_line(args, message, mvtec_root, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", root=mvtec_root) for a in args]
    out = tmp_path / "report"
    assert main(["benchmark", *args, "--out", str(out), *FAST]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("padim: error: ") and message in err[0]
    assert not out.exists()


def test_geometry_specs_parse_and_refuse_typos():
    from padim.errors import PadimError
    from padim.evaluation.benchmark import parse_geometry

    assert parse_geometry("256") == {"size": 256, "crop": None}
    assert parse_geometry("auto") == {"size": "auto", "crop": None}
    assert parse_geometry("256,crop=224")["crop"] == 224
    assert parse_geometry("native,tile=256,overlap=32,statistics=shared") == {
        "size": "native",
        "crop": None,
        "tile": 256,
        "tile_overlap": 32,
        "tile_statistics": "shared",
    }
    with pytest.raises(PadimError, match="expected SIZE"):
        parse_geometry("native,tiles=256")
    with pytest.raises(PadimError, match="overlap must be a whole number"):
        parse_geometry("native,tile=256,overlap=wide")
    assert parse_geometry("256,covariance=full") == {
        "size": 256,
        "crop": None,
        "covariance": "full",
    }
    assert parse_geometry("256,covariance=minor,components=16")["components"] == 16
    with pytest.raises(PadimError, match="components must be a whole number"):
        parse_geometry("256,components=many")


def test_benchmark_compares_geometries_in_one_report(mvtec_root, tmp_path):
    out = tmp_path / "geo"
    args = ["benchmark", "--root", str(mvtec_root), "--out", str(out), "--no-figures"]
    geometries = ["--geometry", "64", "--geometry", "48x32", "--geometry", "64,tile=32,overlap=8"]
    assert main([*args, "--categories", "bottle", "screw", *geometries, *FAST]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    specs = ["64", "48x32", "64,tile=32,overlap=8"]
    assert [(r["geometry"], r["category"]) for r in results] == [
        (g, c) for g in specs for c in ("bottle", "screw")
    ]
    assert [r["input"] for r in results[::2]] == ["64x64", "48x32", "64x64"]
    assert results[4]["tiles"] == "3x3" and results[4]["positions"] == 256
    assert all(r["region_recall"] is not None for r in results)
    tables = (out / "tables.md").read_text()
    assert "## Geometry: accuracy, time and memory" in tables
    assert "| efficientnet_lite0 @ 64,tile=32,overlap=8 | bottle | 64x64 | 3x3 | 256 |" in tables
