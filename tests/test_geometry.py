"""Non-square inputs end to end: fit (WxH and auto), predict, evaluate, export, serve, reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import save, texture

from padim.cli import main

W, H = 96, 40  # camera images wider than tall


def _wide_category(root, n_train=10, n_bad=4, seed=0):
    rng = np.random.default_rng(seed)

    def wide():
        return texture(rng, 96)[28:68]  # (40, 96, 3)

    for i in range(n_train):
        save(root / "train" / "good" / f"{i:03d}.png", wide())
    for i in range(3):
        save(root / "test" / "good" / f"{i:03d}.png", wide())
    for i in range(n_bad):
        img, mask = wide(), np.zeros((H, W), bool)
        x = 10 + 15 * i
        img[12:24, x : x + 14] = (255, 40, 40)
        mask[12:24, x : x + 14] = True
        save(root / "test" / "square" / f"{i:03d}.png", img)
        save(root / "ground_truth" / "square" / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    return root


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return _wide_category(tmp_path_factory.mktemp("wide") / "strip")


def test_fit_wxh_predict_evaluate_reload(wide, tmp_path, capsys):
    import padim

    model_path = tmp_path / "m.safetensors"
    common = ["--quiet", "--device", "cpu"]
    assert main(["fit", str(wide), "--out", str(model_path), "--size", f"{W}x{H}", *common]) == 0
    model = padim.load(model_path, device="cpu")
    assert model.preprocess.output_hw == (H, W) and model.config.crop is None
    scores, maps = model.score(wide / "test" / "square")
    assert scores.shape == (4,) and maps.shape == (4, H, W)
    peak = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert 8 <= peak[0] <= 28 and 4 <= peak[1] <= 34  # the defect of image 0, not the transpose
    out = tmp_path / "pred"
    assert main(["predict", str(model_path), str(wide / "test"), "--out", str(out), *common]) == 0
    from PIL import Image

    assert Image.open(next(out.glob("*_heatmap.png"))).size == (W, H)
    metrics = tmp_path / "m.json"
    assert main(["evaluate", str(model_path), str(wide), "--json", str(metrics), *common]) == 0
    m = json.loads(metrics.read_text())
    assert m["image_auroc"] > 0.9 and m["pixel_auroc"] > 0.9
    capsys.readouterr()
    assert main(["info", str(model_path)]) == 0
    header = json.loads(capsys.readouterr().out)
    assert header["input_size"] == [W, H] and header["grid"] == [10, 24]


def test_size_auto_keeps_the_aspect_ratio(wide, tmp_path):
    import padim

    model = padim.Padim(size="auto", crop="default", device="cpu").fit(wide)
    assert model.config.size == (400, 160)  # 96:40 at about 256x256 pixels, sides of 16
    again = padim.load(model.save(tmp_path / "auto.safetensors"), device="cpu")
    assert again.config.size == (400, 160) and again.preprocess.output_hw == (160, 400)


def test_export_and_serve_a_wide_model(wide, tmp_path):
    pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    import padim
    from padim.deploy.export import export_model
    from padim.deploy.scorers import load_scorer
    from padim.service.app import create_app

    model = padim.Padim(size=(W, H), crop=None, device="cpu").fit(wide)
    path = model.save(tmp_path / "w.safetensors")
    report = export_model(path, tmp_path / "w.onnx", verify=[wide / "test" / "square"])
    assert report.max_rel_score_diff < 1e-4
    image = sorted((wide / "test" / "square").iterdir())[0].read_bytes()
    for scorer in (load_scorer(tmp_path / "w.onnx"), load_scorer(path, device="cpu")):
        assert scorer.input_hw == (H, W) and scorer.input_size == [W, H]
        with TestClient(create_app(scorer)) as client:
            res = client.post("/v1/predict?include=map,heatmap", files={"file": ("a.png", image)})
        body = res.json()
        assert res.status_code == 200, res.text
        assert (body["anomaly_map"]["width"], body["anomaly_map"]["height"]) == (W, H)
        assert body["image"]["input_size"] == [W, H]


def test_paper_perturbation_needs_a_square_model(wide, tmp_path, capsys):
    model_path = tmp_path / "m.safetensors"
    assert main(["fit", str(wide), "--out", str(model_path), "--size", f"{W}x{H}", "--quiet"]) == 0
    assert main(["evaluate", str(model_path), str(wide), "--perturb", "rd-mvtec-test"]) == 1
    assert "square" in capsys.readouterr().err


def test_pictures_come_at_the_photo_own_resolution(wide, tmp_path):
    """Heat map, mask and overlay overlay the original photo (480x200 here), whatever the model
    input is (96x40, or a centre crop); the raw map and the input picture stay at the model's."""
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    import padim
    from padim.deploy.predict import write_predictions
    from padim.deploy.scorers import TorchScorer
    from padim.service.app import create_app

    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((wide / "test" / "square").iterdir())[:2]:
        Image.open(p).resize((480, 200), Image.Resampling.NEAREST).save(photos / p.name)
    for size, crop in (((W, H), None), ((120, 50), (W, H))):
        model = padim.Padim(size=size, crop=crop, device="cpu").fit(wide)
        out = tmp_path / f"pred{size[0]}"
        rows = write_predictions(TorchScorer(model), [photos], out)
        for kind in ("heatmap", "mask", "overlay"):
            assert Image.open(out / getattr(rows[0], kind)).size == (480, 200), (size, kind)
        mask = np.asarray(Image.open(out / rows[0].mask)) > 0
        ys, xs = np.nonzero(mask)
        assert mask.any() and 40 <= ys.mean() <= 110 and 30 <= xs.mean() <= 150  # image 0's defect
    image = (photos / sorted(p.name for p in photos.iterdir())[0]).read_bytes()
    with TestClient(create_app(TorchScorer(model))) as client:
        res = client.post(
            "/v1/predict?include=heatmap,mask,overlay,input,map", files={"file": ("a.png", image)}
        )
    body = res.json()

    def size_of(kind):
        return Image.open(io.BytesIO(base64.b64decode(body["pictures"][kind]))).size

    assert [size_of(k) for k in ("heatmap", "mask", "overlay")] == [(480, 200)] * 3
    assert size_of("input") == (W, H) and body["anomaly_map"]["width"] == W


def test_region_of_interest(wide, tmp_path, capsys):
    """Outside the region nothing is scored: a defect there raises no score, its map is flat at
    the region's lowest value; the region survives save/load and export."""
    import padim

    roi = np.zeros((H, W), np.uint8)
    roi[:, :48] = 255  # inspect the left half of the strip
    roi_file = save(tmp_path / "roi.png", roi)
    model_path = tmp_path / "roi.safetensors"
    assert (
        main(
            [
                "fit",
                str(wide),
                "--out",
                str(model_path),
                "--size",
                f"{W}x{H}",
                "--roi",
                str(roi_file),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    model = padim.load(model_path, device="cpu")
    assert model.training_.roi == {"source": "roi.png", "inside_fraction": 0.5}
    scores, maps = model.score(wide / "test" / "square")  # defects at x 10, 25, 40, 55
    plain = padim.Padim(size=(W, H), crop=None, device="cpu").fit(wide)  # the same Gaussians
    plain_scores, plain_maps = plain.score(wide / "test" / "square")
    np.testing.assert_allclose(maps[:, :, :48], plain_maps[:, :, :48], rtol=1e-4)
    for m in maps:
        assert np.all(m[:, 48:] == m[:, :48].min())  # outside: the region's lowest value
    np.testing.assert_allclose(scores, plain_maps[:, :, :48].max(axis=(1, 2)), rtol=1e-4)
    assert scores[0] > model.threshold_  # a defect inside is found
    assert scores[3] < 0.7 * plain_scores[3]  # one outside (x 55-69) weighs much less
    onnx = pytest.importorskip("onnxruntime") and tmp_path / "roi.onnx"
    from padim.deploy.export import export_model

    assert export_model(model_path, onnx).max_rel_score_diff < 1e-4
    bad = save(tmp_path / "bad.png", np.zeros((100, 100), np.uint8) + 255)
    assert (
        main(
            [
                "fit",
                str(wide),
                "--out",
                str(tmp_path / "x.safetensors"),
                "--size",
                "96x40",
                "--roi",
                str(bad),
                "--quiet",
            ]
        )
        == 1
    )
    assert "region of interest is 100x100" in capsys.readouterr().err
