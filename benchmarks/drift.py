"""Drift alarm measurement: how fast the alarm fires on a simulated shift, and how often it
fires on an unshifted line.

Scores the test images of a category (good and defective) as they are and under simulated
shifts (lighting: brightness x0.85 and x1.15; optics: blur; a new batch of material: lower
contrast and a colour cast), then streams them through `DriftMonitor` as a line would send
them: 98 % good parts and 2 % defects, drawn at random. Unshifted: alarms over 10,000 results.
Shifted: 200 unshifted results, then the shift; results until the alarm (200 streams each).

    python benchmarks/drift.py --model bsdata.safetensors \
        --data ../shared/data/bsdata/ball_screw --out docs/drift_results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from padim import Padim
from padim.data.images import list_images
from padim.lifecycle.drift import DriftMonitor, Reference


def new_material(im: Image.Image) -> Image.Image:
    """Lower contrast and a warm colour cast: another batch of steel, another finish."""
    channels = ImageEnhance.Contrast(im).enhance(0.8).split()
    gains = (1.06, 1.0, 0.92)
    cast = [
        c.point(lambda v, k=k: min(255, int(v * k))) for c, k in zip(channels, gains, strict=True)
    ]
    return Image.merge("RGB", cast)


SHIFTS = {
    "brightness x0.85": lambda im: ImageEnhance.Brightness(im).enhance(0.85),
    "brightness x1.15": lambda im: ImageEnhance.Brightness(im).enhance(1.15),
    "brightness x0.95": lambda im: ImageEnhance.Brightness(im).enhance(0.95),
    "blur (radius 1.5)": lambda im: im.filter(ImageFilter.GaussianBlur(1.5)),
    "new material (contrast x0.8, warm cast)": new_material,
}


def scores_of(model: Padim, images: list[Image.Image]) -> np.ndarray:
    return np.asarray(model.score(images)[0], np.float64)


def stream(rng, good: np.ndarray, bad: np.ndarray, n: int, defect_rate: float) -> np.ndarray:
    pick_bad = rng.random(n) < defect_rate
    return np.where(pick_bad, rng.choice(bad, n), rng.choice(good, n))


def unshifted(reference: Reference, window: int, good, bad, n: int, seeds: int) -> dict:
    alarms, drifting = [], []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        monitor = DriftMonitor(reference, window)
        flagged = 0
        for s in stream(rng, good, bad, n, 0.02):
            monitor.add(s)
            flagged += monitor.state == "drift"
        alarms.append(monitor.alarms)
        drifting.append(flagged / n)
    return {"results": n, "streams": seeds, "alarms": int(sum(alarms)),
            "streams_with_an_alarm": int(sum(a > 0 for a in alarms)),
            "share_of_results_in_drift": float(np.mean(drifting))}  # fmt: skip


def shifted(reference, window, good, bad, moved_good, moved_bad, seeds: int, limit: int) -> dict:
    delays, early = [], 0
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        monitor = DriftMonitor(reference, window)
        for s in stream(rng, good, bad, 200, 0.02):
            monitor.add(s)
        before = monitor.alarms
        early += before
        delay = None
        for i, s in enumerate(stream(rng, moved_good, moved_bad, limit, 0.02), start=1):
            monitor.add(s)
            if monitor.alarms > before:
                delay = i
                break
        delays.append(delay)
    found = [d for d in delays if d is not None]
    return {
        "detected": len(found),
        "streams": seeds,
        "results_to_alarm_median": float(np.median(found)) if found else None,
        "results_to_alarm_p95": float(np.percentile(found, 95)) if found else None,
        "alarms_before_the_shift": early,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a category (MVTec layout)")
    parser.add_argument("--windows", type=int, nargs="+", default=[15, 25, 50])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model = Padim.load(args.model, "cpu")
    summary = model.training_.good_score_summary
    reference = Reference(summary["median"], summary["q95"])
    test = args.data / "test"
    good_images = [Image.open(p).convert("RGB") for p in list_images(test / "good")]
    bad_paths = [p for d in sorted(test.iterdir()) if d.name != "good" for p in list_images(d)]
    bad_images = [Image.open(p).convert("RGB") for p in bad_paths]
    good, bad = scores_of(model, good_images), scores_of(model, bad_images)
    line = f"reference: median {reference.median:.2f}, q95 {reference.upper:.2f}; "
    line += f"test good median {np.median(good):.2f}, q95 {np.quantile(good, 0.95):.2f}"
    print(line, file=sys.stderr)
    moved = {}
    for name, shift in SHIFTS.items():
        moved[name] = (
            scores_of(model, [shift(im) for im in good_images]),
            scores_of(model, [shift(im) for im in bad_images]),
        )
        print(f"{name}: good median {np.median(moved[name][0]):.2f}", file=sys.stderr)
    results = {
        "model": args.model.name,
        "reference": {"median": reference.median, "q95": reference.upper},
        "threshold": float(model.threshold_),
        "test_good": {"n": len(good), "median": float(np.median(good)),
                      "q95": float(np.quantile(good, 0.95))},
        "test_defective": {"n": len(bad), "median": float(np.median(bad))},
        "shift_medians": {k: float(np.median(v[0])) for k, v in moved.items()},
        "windows": {},
    }  # fmt: skip
    for window in args.windows:
        row = {"unshifted": unshifted(reference, window, good, bad, 10_000, 5)}
        for name, (mg, mb) in moved.items():
            row[name] = shifted(reference, window, good, bad, mg, mb, 200, 2000)
        results["windows"][str(window)] = row
        print(f"window {window}: {json.dumps(row)}", file=sys.stderr, flush=True)
    text = json.dumps(results, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
