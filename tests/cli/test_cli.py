"""The CLI contract: commands, flags, outputs, and one-line errors with no partial output."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, make_category, texture
from PIL import Image

from padim.cli import main

FAST = ["--size", str(SIZE), "--crop", "none", "--quiet", "--device", "cpu"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one clear line, no traceback
    assert err[0].startswith("padim: error: ")
    return err[0]


def test_fit_predict_evaluate_calibrate_info(tmp_path, category, capsys):
    model = tmp_path / "m.safetensors"
    assert (
        main(
            [
                "fit",
                str(category),
                "--out",
                str(model),
                *FAST,
                "--channels",
                "all",
                "--batch-size",
                "4",
                "--threads",
                "2",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert model.is_file()
    assert "fitted efficientnet_lite0 on 12 images" in capsys.readouterr().out

    out = tmp_path / "pred"
    inputs = [str(category / "test" / "square"), str(category / "test" / "good")]
    assert main(["predict", str(model), *inputs, "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 10
    assert set(rows[0]) >= {"path", "score", "label"}
    flagged = {r["path"].split("/")[-2] for r in rows if r["label"] == "1"}
    assert "square" in flagged
    for r in rows:  # same stems in two folders must not collide
        assert (out / r["overlay"]).is_file() and (out / r["mask"]).is_file()
    assert len({r["overlay"] for r in rows}) == 10
    assert json.loads((out / "results.json").read_text())["results"][0]["score"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pred")]

    metrics_file = tmp_path / "metrics.json"
    figure = tmp_path / "grid.png"
    assert (
        main(
            [
                "evaluate",
                str(model),
                str(category),
                "--json",
                str(metrics_file),
                "--figure",
                str(figure),
                "--quiet",
            ]
        )
        == 0
    )
    metrics = json.loads(metrics_file.read_text())
    assert metrics["image_auroc"] > 0.9 and metrics["pixel_auroc"] > 0.9
    assert 0 < metrics["aupro"] <= 1 and metrics["per_type_image_auroc"]["square"] > 0.9
    assert Image.open(figure).size[0] > 200

    assert (
        main(
            [
                "evaluate",
                str(model),
                "--good",
                str(category / "test" / "good"),
                "--defective",
                str(category / "test" / "square"),
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "pixel_auroc" in out and "n/a" in out and "no ground-truth masks" in out

    assert main(["calibrate", str(model), "--threshold", "123.5"]) == 0
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["threshold"] == 123.5 and info["config"]["seed"] == 1
    assert main(["calibrate", str(model), str(category), "--quiet"]) == 0
    assert "F1-optimal" in capsys.readouterr().out


def test_backbones_and_help(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0" in out and "wide_resnet50_2" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--backbone",
        "--size",
        "--crop",
        "--channels",
        "--seed",
        "--weights",
        "--batch-size",
        "--device",
        "--threads",
    ):
        assert flag in text


@pytest.fixture
def train_dir(tmp_path):
    folder = tmp_path / "good"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(texture(rng)).save(folder / f"{i}.png")
    return folder


def _fit_fails(tmp_path, data, capsys, *extra) -> str:
    model = tmp_path / "out" / "m.safetensors"
    assert main(["fit", str(data), "--out", str(model), *FAST, *extra]) == 1
    assert not model.exists()
    leftovers = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert leftovers == []
    return _error_line(capsys)


def test_corrupt_training_image(tmp_path, train_dir, capsys):
    (train_dir / "9.png").write_bytes(b"garbage")
    assert "9.png" in _fit_fails(tmp_path, train_dir, capsys)


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "no images" in _fit_fails(tmp_path, tmp_path / "empty", capsys)


def test_single_training_image(tmp_path, train_dir, capsys):
    for p in list(train_dir.iterdir())[1:]:
        p.unlink()
    assert (
        main(
            [
                "fit",
                str(train_dir),
                "--out",
                str(tmp_path / "one.safetensors"),
                "--size",
                "64",
                "--crop",
                "none",
                "--quiet",
            ]
        )
        == 0
    )
    assert "padim: warning: fitted on 1 image(s)" in capsys.readouterr().err


def test_unknown_backbone(tmp_path, train_dir, capsys):
    assert "unknown backbone" in _fit_fails(tmp_path, train_dir, capsys, "--backbone", "vgg99")


def test_weights_that_cannot_be_downloaded(tmp_path, train_dir, capsys, monkeypatch):
    import urllib.error

    import torchvision.models as tvm

    def refuse(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvm.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", refuse)
    line = _fit_fails(tmp_path, train_dir, capsys, "--backbone", "resnet18")
    assert "--weights FILE" in line and "efficientnet_lite0" in line


def test_mixed_image_sizes_are_fine(tmp_path, train_dir, capsys):
    Image.fromarray(texture(np.random.default_rng(5), 100)).save(train_dir / "big.png")
    model = tmp_path / "m.safetensors"
    assert main(["fit", str(train_dir), "--out", str(model), *FAST]) == 0


def test_missing_mask_in_evaluation(tmp_path, model_file, capsys):
    cat = make_category(tmp_path / "cat", n_train=2, n_good=1, n_bad=2)
    (cat / "ground_truth" / "square" / "001_mask.png").unlink()
    report = tmp_path / "m.json"
    assert main(["evaluate", str(model_file), str(cat), "--json", str(report)]) == 1
    assert "missing ground-truth mask" in _error_line(capsys)
    assert not report.exists()


def test_mask_folder_without_a_mask(tmp_path, model_file, category, capsys):
    masks = tmp_path / "masks"
    shutil.copytree(category / "ground_truth" / "square", masks)
    next(masks.iterdir()).unlink()
    assert (
        main(
            [
                "evaluate",
                str(model_file),
                "--defective",
                str(category / "test" / "square"),
                "--good",
                str(category / "test" / "good"),
                "--masks",
                str(masks),
            ]
        )
        == 1
    )
    assert "missing mask" in _error_line(capsys)


def test_truncated_and_foreign_model_files(tmp_path, model_file, category, capsys):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(model_file.read_bytes()[:5000])
    out = tmp_path / "pred"
    assert main(["predict", str(cut), str(category / "test" / "good"), "--out", str(out)]) == 1
    _error_line(capsys)
    assert not out.exists()
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert main(["info", str(notes)]) == 1
    assert "not a padim model" in _error_line(capsys)


def test_predict_goes_on_past_a_bad_input(tmp_path, model_file, category, capsys):
    """An unreadable image is an error row (as in the Ray engine); the others are scored."""
    inputs = tmp_path / "inputs"
    shutil.copytree(category / "test" / "good", inputs)
    (inputs / "zzz.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "pred"
    assert main(["predict", str(model_file), str(inputs), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"padim: warning: 1 of 5 images could not be scored (error rows in {out / 'results.csv'})"
    ]
    with (out / "results.csv").open() as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert rows["zzz.png"]["score"] == "" and rows["zzz.png"]["label"] == ""
    assert rows["zzz.png"]["error"].startswith("not_an_image: ")
    assert all(r["error"] == "" and r["score"] for n, r in rows.items() if n != "zzz.png")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".pred")] == []
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "a.png").write_bytes(b"not an image")
    assert main(["predict", str(model_file), str(only_bad), "--out", str(tmp_path / "p3")]) == 1
    assert "none of the 1 images could be scored" in _error_line(capsys)
    assert (tmp_path / "p3" / "results.csv").is_file()  # the error rows are still a result


def test_predict_from_a_manifest(tmp_path, model_file, category, capsys):
    images = sorted((category / "test" / "square").iterdir())[:3]
    for p in images:
        shutil.copy(p, tmp_path / p.name)
    manifest = tmp_path / "list.csv"  # relative paths are relative to the manifest
    manifest.write_text("path\n" + "".join(f"{p.name}\n" for p in images))
    out = tmp_path / "pred"
    assert (
        main(
            ["predict", str(model_file), str(manifest), "--out", str(out), "--quiet", "--no-images"]
        )
        == 0
    )
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["path"] for row in rows] == [str(tmp_path / p.name) for p in images]
    manifest.write_text("path\nmissing.png\n")
    assert main(["predict", str(model_file), str(manifest), "--out", str(tmp_path / "p2")]) == 1
    assert "missing.png" in _error_line(capsys)


def test_predict_missing_input(tmp_path, model_file, capsys):
    assert (
        main(["predict", str(model_file), str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")])
        == 1
    )
    assert "not found" in _error_line(capsys)


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "x", "--out", "m", "--crop", "abc"])
    assert exit_info.value.code == 2


def test_download_without_network_fails_clearly(tmp_path, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    def refuse(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    root = tmp_path / "mvtec"
    assert main(["download", "mvtec", "--category", "bottle", "--root", str(root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    line = err[-1]
    assert line.startswith("padim: error: cannot download MVTec AD bottle")
    assert "internet" in line
    assert not (root / "bottle").exists()
    assert main(["download", "mvtec", "--category", "bottel", "--root", str(root)]) == 1
    assert "unknown MVTec AD category" in capsys.readouterr().err


def test_score_mode_and_shrinkage_options(tmp_path, category, capsys):
    model = tmp_path / "m.safetensors"
    assert (
        main(
            [
                "fit",
                str(category),
                "--out",
                str(model),
                "--size",
                "64",
                "--crop",
                "none",
                "--score-mode",
                "hybrid",
                "--shrinkage",
                "ledoit-wolf",
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["info", str(model)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["score_mode"] == "hybrid"
    assert info["config"]["shrinkage"] == "ledoit-wolf"
    for mode in ("hybrid", "chebyshev"):
        out = tmp_path / f"{mode}.json"
        assert (
            main(
                [
                    "evaluate",
                    str(model),
                    str(category),
                    "--score-mode",
                    mode,
                    "--json",
                    str(out),
                    "--quiet",
                ]
            )
            == 0
        )
        metrics = json.loads(out.read_text())
        assert metrics["threshold"] == pytest.approx(info["info"]["thresholds"][mode])
    assert (
        main(
            [
                "predict",
                str(model),
                str(category / "test" / "good"),
                "--out",
                str(tmp_path / "p"),
                "--score-mode",
                "chebyshev",
                "--no-images",
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "p" / "results.json").read_text())
    assert all(-1 <= r["score"] <= 1 for r in rows["results"])


def test_predict_searches_folders_recursively(tmp_path, model_file, category, capsys):
    """Local predict takes a test/ folder with one sub-folder per type, as the Ray engine does;
    pictures get the sub-folder in their names so equal file names do not collide."""
    out = tmp_path / "pred"
    assert (
        main(["predict", str(model_file), str(category / "test"), "--out", str(out), "--quiet"])
        == 0
    )
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    expected = sorted(p for p in (category / "test").rglob("*.png"))
    assert [row["path"] for row in rows] == [str(p) for p in expected]
    assert (out / "good__000_heatmap.png").is_file() and (out / "square__000_mask.png").is_file()


def test_ray_options_need_the_ray_engine(tmp_path, category, capsys):
    """Given explicitly, even at their default values, Ray options need --engine ray."""
    for extra in (["--shards", "2"], ["--cpus-per-task", "1"], ["--address", "auto"]):
        args = ["fit", str(category), "--out", str(tmp_path / "m.safetensors"), *FAST, *extra]
        assert main(args) == 1
        line = _error_line(capsys)
        assert extra[0] in line and "--engine ray" in line
    assert not (tmp_path / "m.safetensors").exists()


def test_evaluate_names_its_mistakes_and_its_files(model_file, category, tmp_path, capsys):
    """evaluate named neither the images it got wrong nor the files it wrote."""
    from padim import load

    strict = load(model_file)
    strict.set_threshold(0.0)  # everything is anomalous at 0: every good image is wrong
    path = strict.save(tmp_path / "strict.safetensors")
    out = tmp_path / "m.json"
    assert main(["evaluate", str(path), str(category), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "false alarms (good, scored above the threshold)" in text
    assert "good" in text.split("false alarms")[1].splitlines()[1]  # a good image's path
    assert f"wrote {out}" in text
