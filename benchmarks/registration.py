"""Which registration: padim's (Fourier-Mellin + phase correlation + ECC) against keypoints
(ORB or SIFT + RANSAC; AKAZE is not in OpenCV 5's wheels) and ECC alone, on real photos moved
by known rigid motions.

Each test photo of a data set is turned and shifted by a random known motion (the scene
continues past the edges: reflected border), then registered back onto the original with
each method. Reported per method: the median and 95th-percentile corner error (pixels: how
far the photo's corners land from where the true motion puts them), failures (no estimate,
or a corner error over 5 pixels) and milliseconds per photo.

    python benchmarks/registration.py   # bottle +-10 and +-30 deg; BSData +-3 deg, +-30 px
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from padim.data.align import Aligner
from padim.data.images import read_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = {
    "bottle": (SHARED / "mvtec_ad" / "bottle" / "test", 10.0, 16.0),
    "bottle, large turns": (SHARED / "mvtec_ad" / "bottle" / "test", 30.0, 24.0),
    "bsdata": (SHARED / "bsdata" / "ball_screw" / "test", 3.0, 30.0),
}
FAIL_PX = 5.0


def motion(rng: np.random.Generator, size: tuple[int, int], angle: float, shift: float):
    w, h = size
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-angle, angle), 1.0)
    m[:, 2] += rng.uniform(-shift, shift, size=2)
    return np.vstack([m, [0, 0, 1]])  # reference -> photo


def corner_error(found: np.ndarray | None, truth: np.ndarray, size: tuple[int, int]) -> float:
    """Largest distance between where `found` (photo -> reference) and the truth put the
    photo's corners."""
    if found is None or not np.isfinite(found).all():
        return float("inf")
    w, h = size
    corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], np.float64).T
    want = np.linalg.inv(truth) @ corners
    got = found @ corners
    return float(np.abs(want[:2] / want[2] - got[:2] / got[2]).max())


def keypoints(detector: cv2.Feature2D, norm: int) -> Callable:
    matcher = cv2.BFMatcher(norm, crossCheck=True)

    def estimate(reference: np.ndarray, photo: np.ndarray) -> np.ndarray | None:
        g1, g2 = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (reference, photo))
        k1, d1 = detector.detectAndCompute(g1, None)
        k2, d2 = detector.detectAndCompute(g2, None)
        if d1 is None or d2 is None or len(k1) < 3 or len(k2) < 3:
            return None
        matches = matcher.match(d2, d1)
        if len(matches) < 3:
            return None
        src = np.float32([k2[m.queryIdx].pt for m in matches])
        dst = np.float32([k1[m.trainIdx].pt for m in matches])
        m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC)
        return None if m is None else np.vstack([m, [0, 0, 1]])

    return estimate


def ecc_alone(reference: np.ndarray, photo: np.ndarray) -> np.ndarray | None:
    g1, g2 = (
        cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255 for x in (reference, photo)
    )
    warp = np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
    try:
        _, warp = cv2.findTransformECC(g1, g2, warp, cv2.MOTION_EUCLIDEAN, criteria, None, 5)
    except cv2.error:
        return None
    return np.linalg.inv(np.vstack([warp, [0, 0, 1]]).astype(np.float64))


def padim_rigid(reference: np.ndarray, photo: np.ndarray) -> np.ndarray | None:
    return Aligner("rigid").fit([], reference).estimate(photo).matrix


METHODS: dict[str, Callable] = {
    "padim (Fourier-Mellin + phase correlation + ECC)": padim_rigid,
    "ORB + RANSAC": keypoints(cv2.ORB_create(1000), cv2.NORM_HAMMING),
    "SIFT + RANSAC": keypoints(cv2.SIFT_create(), cv2.NORM_L2),
    "ECC alone (from no motion)": ecc_alone,
}


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"| data | method | median corner error px | 95 % | failures (> {FAIL_PX:g} px) | ms |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (folder, angle, shift) in SETS.items():
        paths = sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))[::3][:40]
        cases = []
        for p in paths:
            reference = np.asarray(read_image(p))
            size = (reference.shape[1], reference.shape[0])
            truth = motion(rng, size, angle, shift)
            photo = cv2.warpAffine(reference, truth[:2], size, borderMode=cv2.BORDER_REFLECT)
            cases.append((reference, photo, truth, size))
        for method, estimate in METHODS.items():
            errors, started = [], time.perf_counter()
            for reference, photo, truth, size in cases:
                errors.append(corner_error(estimate(reference, photo), truth, size))
            ms = 1000 * (time.perf_counter() - started) / len(cases)
            e = np.array(errors)
            ok = e[np.isfinite(e)]
            print(
                f"| {name} | {method} | {np.median(ok):.2f} | {np.quantile(ok, 0.95):.2f} | "
                f"{int((e > FAIL_PX).sum())}/{len(e)} | {ms:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
