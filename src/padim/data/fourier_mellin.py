"""Turn and scale between two photos, whatever their shift: phase correlation of their
log-polar magnitude spectra (Fourier-Mellin). The first step of `padim.data.align`'s
registration; OpenCV's DFT, polar warp and spectrum products (`pip install "padim[align]"`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from padim.extras import require

ANGLE_ROWS = 360  # log-polar rows: a degree each (then ECC refines)
RADIUS_COLUMNS = 128
PEAK_TIE = 0.8  # log-polar peaks this close to the best are equivalent poses: take the least turn


def cv2_module() -> Any:
    """OpenCV, or one line saying how to install it."""
    return require("cv2", "align", "--align (registering parts onto a reference)")


def log_polar_spectrum(gray: np.ndarray) -> np.ndarray:
    """The high-passed log magnitude spectrum of `gray` (zero-padded to a square, so a turn of
    the image is a turn of its spectrum) in log-polar coordinates: rows are angles
    (ANGLE_ROWS over 360 degrees), columns log-radii (RADIUS_COLUMNS). A shift of the image
    leaves it unchanged; a turn moves it along the rows, a scaling along the columns."""
    cv2 = cv2_module()
    side = max(gray.shape)
    square = np.zeros((side, side), np.float32)
    square[: gray.shape[0], : gray.shape[1]] = gray
    planes = cv2.dft(square, flags=cv2.DFT_COMPLEX_OUTPUT)
    spectrum = np.fft.fftshift(cv2.magnitude(planes[..., 0], planes[..., 1]))
    spectrum = np.log1p(spectrum) * highpass(spectrum.shape)
    flags = cv2.WARP_POLAR_LOG | cv2.INTER_LINEAR
    return cv2.warpPolar(
        spectrum, (RADIUS_COLUMNS, ANGLE_ROWS), (side / 2, side / 2), side / 2, flags
    )


def rotation_and_scale(
    photo: np.ndarray, reference: np.ndarray, max_angle: float, max_scale: float
) -> tuple[float, float]:
    """The turn (degrees, OpenCV's counter-clockwise sense) and the scale that bring the photo
    back onto the reference: the phase correlation of their log-polar spectra
    (`log_polar_spectrum`; `reference` is one already), its peak searched only among turns up
    to `max_angle` and scalings up to `max_scale`, so a part with a symmetry takes the nearest
    of its equivalent poses, not the first."""
    cv2 = cv2_module()
    side = max(photo.shape)
    moved = cv2.dft(log_polar_spectrum(photo), flags=cv2.DFT_COMPLEX_OUTPUT)
    fixed = cv2.dft(reference, flags=cv2.DFT_COMPLEX_OUTPUT)
    cross = cv2.mulSpectrums(fixed, moved, 0, conjB=True)
    cross /= np.maximum(cv2.magnitude(cross[..., 0], cross[..., 1]), 1e-12)[..., None]
    corr = cv2.idft(cross, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    rows, cols = corr.shape
    log_base = math.log(side / 2) / cols  # log-radius per column
    dy = np.fft.fftfreq(rows, 1 / rows)  # signed shifts in FFT order
    dx = np.fft.fftfreq(cols, 1 / cols)
    turn = np.abs(dy) * 360.0 / rows
    allowed = np.minimum(turn, np.abs(180.0 - turn)) <= max_angle + 1.0  # spectra repeat at 180
    allowed &= turn <= 90.0 + 1e-9  # one of each pair of equivalent turns
    scaled = np.abs(dx) * log_base <= math.log1p(max_scale) + log_base
    window = np.where(allowed[:, None] & scaled[None, :], corr, -np.inf)
    # near-ties (a part with a symmetry, a round one): the smallest turn and scaling
    strong = window >= PEAK_TIE * window.max()
    cost = turn[:, None] * 1e3 + np.abs(dx)[None, :]
    r, c = np.unravel_index(int(np.argmin(np.where(strong, cost, np.inf))), corr.shape)
    sub_r, sub_c = subpixel_peak(corr, int(r), int(c))
    return float(-(dy[r] + sub_r) * 360.0 / rows), math.exp(-(dx[c] + sub_c) * log_base)


def subpixel_peak(corr: np.ndarray, r: int, c: int) -> tuple[float, float]:
    """The peak's sub-cell offset (parabola through it and its neighbours, with wrap-around)."""
    rows, cols = corr.shape

    def offset(left: float, mid: float, right: float) -> float:
        den = left - 2 * mid + right
        return 0.0 if den >= 0 else float(np.clip(0.5 * (left - right) / den, -0.5, 0.5))

    return (
        offset(corr[(r - 1) % rows, c], corr[r, c], corr[(r + 1) % rows, c]),
        offset(corr[r, (c - 1) % cols], corr[r, c], corr[r, (c + 1) % cols]),
    )


def highpass(shape: tuple[int, int]) -> np.ndarray:
    """A high-pass filter for log spectra (the usual one for Fourier-Mellin registration)."""
    yy = np.cos(np.pi * (np.arange(shape[0]) / shape[0] - 0.5))
    xx = np.cos(np.pi * (np.arange(shape[1]) / shape[1] - 0.5))
    grid = np.outer(yy, xx)
    return ((1.0 - grid) * (2.0 - grid)).astype(np.float32)
