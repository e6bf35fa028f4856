"""The whole pipeline on real data: MVTec AD bottle from ../shared (CC BY-NC-SA 4.0)."""

import json

import pytest

from padim.cli import main

pytestmark = pytest.mark.slow


def test_bottle_efficientnet_lite0_256_no_crop_all_channels(bottle, tmp_path, capsys):
    """anomalib's PaDiM with the same weights, geometry and channels scores 0.998 / 0.984."""
    model = tmp_path / "bottle.safetensors"
    assert main(["fit", str(bottle), "--out", str(model), "--backbone", "efficientnet_lite0",
                 "--size", "256", "--crop", "none", "--channels", "all", "--quiet"]) == 0
    metrics_file = tmp_path / "metrics.json"
    assert main(["evaluate", str(model), str(bottle), "--json", str(metrics_file),
                 "--figure", str(tmp_path / "bottle.png"), "--quiet"]) == 0
    metrics = json.loads(metrics_file.read_text())
    print(metrics)
    assert metrics["n_images"] == 83 and metrics["n_anomalous"] == 63
    assert metrics["image_auroc"] >= 0.99
    assert metrics["pixel_auroc"] >= 0.98
    assert metrics["image_accuracy_at_threshold"] >= 0.85


def test_bottle_predict_flags_defects(bottle, tmp_path):
    from padim import Padim

    model = Padim(size=128, crop=None, device="cpu").fit(bottle)
    preds = model.predict([bottle / "test" / "broken_large" / "000.png",
                           bottle / "test" / "good" / "000.png"])
    assert preds[0].score > preds[1].score
    assert preds[0].is_anomalous
