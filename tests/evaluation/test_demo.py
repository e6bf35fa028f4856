import json

import numpy as np
import pytest
from PIL import Image

from padim.data.demo_set import DEFECTS, N_PER_DEFECT, N_TEST_GOOD, N_TRAIN, build_demo_set
from padim.evaluation.demo import run_demo


def test_demo_set_has_mvtec_layout_and_exact_masks(tmp_path):
    cat = build_demo_set(tmp_path, "gravel")
    assert len(list((cat / "train" / "good").iterdir())) == N_TRAIN
    assert len(list((cat / "test" / "good").iterdir())) == N_TEST_GOOD
    for defect in DEFECTS:
        images = sorted((cat / "test" / defect).iterdir())
        assert len(images) == N_PER_DEFECT
        mask = np.asarray(Image.open(cat / "ground_truth" / defect / "000_mask.png")) > 0
        assert 0 < mask.mean() < 0.2


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The README's first command: build, fit, evaluate and report, offline."""
    report = run_demo(tmp_path / "demo", device="cpu", progress=False)
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["image_auroc"] > 0.9 and metrics["pixel_auroc"] > 0.9
    assert "![results](results.png)" in report.read_text()
    assert Image.open(tmp_path / "demo" / "results.png").size[1] > 500
    assert (tmp_path / "demo" / "model.safetensors").is_file()
