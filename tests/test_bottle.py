"""The whole pipeline on real data: MVTec AD bottle from ../shared (CC BY-NC-SA 4.0)."""

import json

import pytest

from padim.cli import main

pytestmark = pytest.mark.slow


def test_bottle_efficientnet_lite0_256_no_crop_all_channels(bottle, tmp_path, capsys):
    """anomalib's PaDiM with the same weights, geometry and channels scores 0.998 / 0.984.
    The model file stores the whitening matrices in float16: its AUROCs must stay within
    0.002 of the in-memory float32 model's."""
    from padim import Padim
    from padim.data.datasets import mvtec_test_set
    from padim.evaluation.evaluate import evaluate

    model = Padim(
        backbone="efficientnet_lite0", size=256, crop=None, channels=176, device="cpu"
    ).fit(bottle)
    path = model.save(tmp_path / "bottle.safetensors")
    in_memory = evaluate(model, mvtec_test_set(bottle)).metrics
    metrics_file = tmp_path / "metrics.json"
    assert (
        main(
            [
                "evaluate",
                str(path),
                str(bottle),
                "--json",
                str(metrics_file),
                "--figure",
                str(tmp_path / "bottle.png"),
                "--quiet",
            ]
        )
        == 0
    )
    metrics = json.loads(metrics_file.read_text())
    print(metrics)
    assert metrics["n_images"] == 83 and metrics["n_anomalous"] == 63
    assert metrics["image_auroc"] >= 0.99
    assert metrics["pixel_auroc"] >= 0.98
    assert metrics["image_accuracy_at_threshold"] >= 0.85
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert abs(metrics[key] - in_memory[key]) <= 0.002, key


def test_bottle_predict_flags_defects(bottle, bottle_model_file):
    from padim import load

    model = load(bottle_model_file, device="cpu")
    preds = model.predict(
        [bottle / "test" / "broken_large" / "000.png", bottle / "test" / "good" / "000.png"]
    )
    assert preds[0].score > preds[1].score
    assert preds[0].is_anomalous
