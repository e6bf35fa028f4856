"""Registration of photos onto a reference part before PaDiM sees them (parts never sit in
the same place twice): estimate the transform that brings a photo onto the reference, warp the
photo, and bring maps back (`padim.data.aligned`).

Method (OpenCV, `pip install "padim[align]"`; measured against keypoints in
benchmarks/registration.py), on a copy of at most 256 pixels per side at the reference's
scale:
1. on a half-size copy, ECC (enhanced correlation coefficient) with the mode's motion model,
   started from the shift that phase correlation finds, and again from the turn and scale
   that the log-polar spectra's phase correlation finds (Fourier-Mellin,
   `padim.data.fourier_mellin`), the latter kept only when it correlates clearly better;
2. a few ECC steps at the working size; the final correlation is the alignment quality.
Only the photo's pixels and the inside of the matching mask count. A photo whose quality is
below `min_quality`, or whose motion is beyond the allowed shift, turn or scale, is not aligned:
the caller gets the reason, never a "good" verdict. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from padim import options
from padim.data.fourier_mellin import cv2_module, log_polar_spectrum, rotation_and_scale
from padim.data.images import ImageInput, as_image
from padim.errors import PadimError

MODES = options.ALIGN_MODES[1:]  # "none" is no Aligner
SIMPLER = 0.003  # the registration started from no turn is kept unless the one started from
# Fourier-Mellin's turn correlates this much better: a round part's spectrum suggests turns
# that are not there, and turning it moves the patches the Gaussians were fitted on
REFERENCE_SAMPLE = 64  # training images the automatic reference is chosen among
QUALITY_SAMPLE = 32  # training images the learned quality bound is measured on
MIN_QUALITY = 0.5  # the lowest bound: photos of another part correlate at about 0.4-0.7
MAX_LEARNED_QUALITY = 0.8  # the highest learned bound: a defect lowers the correlation too
WORK_SIDE = 256  # estimation runs on images with this longest side (the photo's own scale back)
ECC_ITERATIONS = 50  # at the half-size level, from the phase correlations' estimate
ECC_FINE_ITERATIONS = 15  # at the working size, from the half-size level's
ECC_EPSILON = 1e-4


@dataclass(frozen=True)
class Transform:
    """`matrix` (3x3) maps a photo's pixel coordinates onto the reference's; `quality` is the
    ECC correlation of the aligned photo with the reference (1: identical); `reason` is why a
    photo could not be aligned (empty when it was)."""

    matrix: np.ndarray
    quality: float
    reason: str = ""
    center: tuple[float, float] = (0.0, 0.0)  # the reference's centre (the shift is measured there)

    @property
    def ok(self) -> bool:
        return not self.reason

    @property
    def shift(self) -> tuple[float, float]:
        """How far (pixels, x and y) the part's centre lies from where the reference has it."""
        cx, cy = self.center
        p = np.linalg.solve(self.matrix, np.array([cx, cy, 1.0]))
        return float(p[0] / p[2] - cx), float(p[1] / p[2] - cy)

    @property
    def angle(self) -> float:
        """How far the photo is turned from the reference, in degrees (counter-clockwise as
        the image is seen, OpenCV's sense)."""
        return math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))

    @property
    def scale(self) -> float:
        return math.sqrt(abs(float(np.linalg.det(self.matrix[:2, :2]))))

    def to_dict(self) -> dict[str, Any]:
        return {
            "shift": [round(v, 3) for v in self.shift],
            "angle": round(self.angle, 3),
            "scale": round(self.scale, 5),
            "quality": round(self.quality, 5),
            "aligned": self.ok,
            "reason": self.reason or None,
        }


def to_gray(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8/float -> (H, W) float32 in [0, 1]."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3:
        array = array[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    return array / 255.0 if array.max(initial=0) > 1.0 else array


def _resize(gray: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """`gray` with its longest side at `side` and the factor applied."""
    return _scaled(gray, side / max(gray.shape))


def _scaled(gray: np.ndarray, factor: float) -> tuple[np.ndarray, float]:
    """`gray` resized by `factor` (both sides), and the factor applied."""
    cv2 = cv2_module()
    size = (max(8, round(gray.shape[1] * factor)), max(8, round(gray.shape[0] * factor)))
    if size == (gray.shape[1], gray.shape[0]):
        return gray, 1.0
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA), factor


def _scaling(factor: float) -> np.ndarray:
    return np.diag([factor, factor, 1.0])


@dataclass(frozen=True)
class Level:
    """The reference at one scale of the estimation: its image, a Hanning window, its
    log-polar spectrum, the matching mask (uint8, ones when the whole image is matched), and
    `to_fine`: the 3x3 scaling from this level's pixels to the working size's."""

    reference: np.ndarray
    window: np.ndarray
    spectrum: np.ndarray
    mask: np.ndarray
    to_fine: np.ndarray

    @classmethod
    def of(
        cls, reference: np.ndarray, mask: np.ndarray | None, to_fine: np.ndarray | None = None
    ) -> Level:
        cv2 = cv2_module()
        h, w = reference.shape
        window = cv2.createHanningWindow((w, h), cv2.CV_32F)
        ones = np.ones((h, w), np.uint8) if mask is None else mask
        scale = np.eye(3) if to_fine is None else to_fine
        return cls(reference, window, log_polar_spectrum(reference * window), ones, scale)

    def halved(self) -> Level:
        """The same reference at half the size."""
        cv2 = cv2_module()
        h, w = self.reference.shape
        size = (max(8, w // 2), max(8, h // 2))
        small = cv2.resize(self.reference, size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(self.mask, size, interpolation=cv2.INTER_NEAREST)
        return Level.of(small, mask, np.diag([w / size[0], h / size[1], 1.0]))

    def resized(self, image: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An image and its valid mask at this level's size (from the working size)."""
        cv2 = cv2_module()
        h, w = self.reference.shape
        if image.shape == (h, w):
            return image, valid
        small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        return small, cv2.resize(valid, (w, h), interpolation=cv2.INTER_NEAREST)


class Aligner:
    """Registers photos onto one reference image (scikit-learn shape: `fit` picks the reference
    from good images, `estimate` and `warp` align a photo, `to_photo` brings a map back).

    Parameters: `mode` (one of MODES), `max_shift` (fraction of the reference's longest side),
    `max_angle` (degrees), `max_scale` (relative change), `min_quality` (ECC correlation),
    `roi` (a mask at the reference's size: only its inside is matched).
    """

    def __init__(
        self,
        mode: str = "rigid",
        max_shift: float = options.ALIGN_MAX_SHIFT.default,
        max_angle: float = options.ALIGN_MAX_ANGLE.default,
        max_scale: float = options.ALIGN_MAX_SCALE.default,
        min_quality: float = MIN_QUALITY,
        roi: np.ndarray | None = None,
    ) -> None:
        self.mode = mode
        self.max_shift = max_shift
        self.max_angle = max_angle
        self.max_scale = max_scale
        self.min_quality = min_quality
        self.roi = roi

    # ------------------------------------------------------------------ reference

    def fit(self, images: Sequence[ImageInput], reference: ImageInput | None = None) -> Aligner:
        """Choose the reference: `reference` when given, else the good image closest to the
        pixel-wise median of (up to REFERENCE_SAMPLE of) the others: a typical part in a
        typical place."""
        if self.mode not in MODES:
            raise PadimError(f"--align must be none or one of {', '.join(MODES)}, got {self.mode}")
        for name, value, low, high in (
            ("--align-max-shift", self.max_shift, 0.0, 1.0),
            ("--align-max-angle", self.max_angle, 0.0, 180.0),
            ("--align-max-scale", self.max_scale, 0.0, 1.0),
            ("--align-min-quality", self.min_quality, -1.0, 1.0),
        ):
            if not (math.isfinite(value) and low <= value <= high):
                raise PadimError(f"{name} must be from {low:g} to {high:g}, got {value!r}")
        if reference is None:
            reference = typical_image(images)
        rgb = np.asarray(as_image(reference).convert("RGB"))
        gray = to_gray(rgb)
        self.reference_image_ = rgb  # (H, W, 3) uint8: fills what a moved photo leaves empty
        self.reference_size_ = (gray.shape[1], gray.shape[0])  # (width, height)
        self.reference_, self.factor_ = _resize(gray, WORK_SIDE)
        self.mask_ = None
        if self.roi is not None:
            cv2 = cv2_module()
            roi = np.asarray(self.roi)
            if roi.ndim != 2:
                raise PadimError(f"--align-roi must be a single-channel mask, got {roi.shape}")
            if abs(roi.shape[1] / roi.shape[0] - gray.shape[1] / gray.shape[0]) > 0.02:
                raise PadimError(
                    f"--align-roi is {roi.shape[1]}x{roi.shape[0]} but the reference is "
                    f"{gray.shape[1]}x{gray.shape[0]}: give it at the reference's geometry"
                )
            size = (self.reference_.shape[1], self.reference_.shape[0])
            mask = cv2.resize((roi > 0).astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
            if not mask.any():
                raise PadimError("--align-roi is empty: nothing to match")
            self.mask_ = mask
        self.fine_ = Level.of(self.reference_, self.mask_)
        self.coarse_ = self.fine_.halved()
        return self

    def sample(self, images: Sequence[ImageInput]) -> list[Transform]:
        """The transforms of up to QUALITY_SAMPLE good images, evenly spread (checked
        against the current bounds)."""
        step = max(1, len(images) // QUALITY_SAMPLE)
        chosen = list(images[::step])[:QUALITY_SAMPLE]
        return [self.estimate(np.asarray(as_image(i).convert("RGB"))) for i in chosen]

    def learn_min_quality(self, sample: Sequence[Transform]) -> float:
        """Set `min_quality` from good images' transforms (`sample`): their lowest quality q
        minus 2 x (1 - q), within [MIN_QUALITY, MAX_LEARNED_QUALITY]. Good photos of a part
        sit close to 1 (ECC ignores brightness and contrast: 0.92-0.99 on BSData and MVTec
        bottle), photos of another part, or of it turned beyond the allowed range, at 0.4-0.7;
        a defective part must still align, so the bound stays below 0.8."""
        low = min(t.quality for t in sample)
        bound = min(MAX_LEARNED_QUALITY, max(MIN_QUALITY, low - 2 * (1 - low)))
        self.min_quality = float(bound)
        return self.min_quality

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "reference_")

    def align(self, photo: Image.Image) -> tuple[Image.Image, Transform]:
        """The photo brought onto the reference (at its size; what the photo does not cover
        is filled from the reference, so it looks like a good part and scores no evidence),
        and the transform that did it."""
        array = np.asarray(photo.convert("RGB"))
        t = self.estimate(array)
        warped, covered = self.warp(array, t)
        warped[~covered] = self.reference_image_[~covered]
        return Image.fromarray(warped), t

    # ------------------------------------------------------------------ estimation

    def estimate(self, image: np.ndarray) -> Transform:
        """The transform taking `image`'s pixels onto the reference's, checked against the
        allowed ranges and quality (see `Transform.reason`). Estimated on a half-size copy
        (turn and scale, shift, ECC), then refined by a few ECC steps at the working size,
        whose correlation is the quality."""
        gray = to_gray(image)
        # at the reference's working scale (same camera, same pixels per millimetre): a photo
        # of another size must not be rescaled to fill the working side
        photo, photo_factor = _scaled(gray, self.factor_)
        photo, valid = self._to_reference_canvas(photo)
        level, mode = self.coarse_, self.mode
        small, small_valid = level.resized(photo, valid)
        # ECC from a shift alone (it finds a turn of up to ~15 degrees by itself) ...
        start = self._coarse(level, small, "translation")
        warp, quality = self._refine(level, small, small_valid, start, mode)
        if mode != "translation":  # ... and from Fourier-Mellin's turn and scale: the
            start = self._coarse(level, small, mode)  # latter must do clearly better (SIMPLER)
            turned, turned_quality = self._refine(level, small, small_valid, start, mode)
            if turned_quality > quality + SIMPLER:
                warp, quality = turned, turned_quality
        up = level.to_fine @ warp @ np.linalg.inv(level.to_fine)
        warp, quality = self._refine(self.fine_, photo, valid, up, mode, ECC_FINE_ITERATIONS)
        # back to full-resolution coordinates: photo (full) -> work -> reference work -> full
        matrix = _scaling(1 / self.factor_) @ warp @ _scaling(photo_factor)
        center = (self.reference_size_[0] / 2, self.reference_size_[1] / 2)
        return self.estimate_checked(Transform(matrix, quality, "", center))

    def _to_reference_canvas(self, photo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The working photo padded (with its mean) or cut to the reference's working size
        (same origin), and where it has pixels (uint8 mask: only those are matched)."""
        h, w = self.reference_.shape
        canvas = np.full((h, w), float(photo.mean()), np.float32)
        valid = np.zeros((h, w), np.uint8)
        ph, pw = min(h, photo.shape[0]), min(w, photo.shape[1])
        canvas[:ph, :pw] = photo[:ph, :pw]
        valid[:ph, :pw] = 1
        return canvas, valid

    def _coarse(self, level: Level, photo: np.ndarray, mode: str) -> np.ndarray:
        """Rotation and scale (Fourier-Mellin), then translation, by phase correlation."""
        cv2 = cv2_module()
        ref, window = level.reference, level.window
        h, w = ref.shape
        rotation = np.eye(3)
        if mode != "translation":
            max_scale = 0.0 if mode == "rigid" else self.max_scale
            angle, scale = rotation_and_scale(
                photo * window, level.spectrum, self.max_angle, max_scale
            )
            if mode == "rigid":
                scale = 1.0
            rotation = np.vstack([cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale), [0, 0, 1]])
        turned = cv2.warpAffine(photo, rotation[:2], (w, h), flags=cv2.INTER_LINEAR)
        (dx, dy), _ = cv2.phaseCorrelate(ref * window, turned * window)
        shift = np.array([[1, 0, -dx], [0, 1, -dy], [0, 0, 1]], np.float64)
        return shift @ rotation

    def _refine(
        self,
        level: Level,
        photo: np.ndarray,
        valid: np.ndarray,
        warp: np.ndarray,
        mode: str,
        iterations: int = ECC_ITERATIONS,
    ) -> tuple[np.ndarray, float]:
        """ECC refinement with a mode's motion model at one level; its correlation is the
        quality."""
        cv2 = cv2_module()
        motion = {
            "translation": cv2.MOTION_TRANSLATION,
            "rigid": cv2.MOTION_EUCLIDEAN,
            "similarity": cv2.MOTION_AFFINE,
            "homography": cv2.MOTION_HOMOGRAPHY,
        }[mode]
        # ECC warps the input onto the template: template = reference, input = photo, and its
        # matrix maps reference coordinates to photo coordinates (the inverse of ours)
        inverse = np.linalg.inv(warp)
        start = inverse.astype(np.float32) if mode == "homography" else inverse[:2]
        start = np.ascontiguousarray(start, dtype=np.float32)
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, ECC_EPSILON)
        try:
            if hasattr(cv2, "findTransformECCWithMask"):  # OpenCV >= 4.12: both masks
                quality, found = cv2.findTransformECCWithMask(
                    level.reference, photo, level.mask, valid, start, motion, criteria, 5
                )
            else:  # older: the photo's valid pixels only
                quality, found = cv2.findTransformECC(
                    level.reference, photo, start, motion, criteria, valid, 5
                )
        except cv2.error:
            return warp, -1.0  # did not converge: the quality says it
        full = found if found.shape == (3, 3) else np.vstack([found, [0, 0, 1]])
        refined = np.linalg.inv(full.astype(np.float64))
        if mode == "similarity":  # the closest rotation + uniform scale to the affine fit
            refined = _nearest_similarity(refined)
        return refined, float(quality)

    def estimate_checked(self, t: Transform) -> Transform:
        """`t` checked again against the current bounds (after `learn_min_quality`)."""
        return Transform(t.matrix, t.quality, self._check(t), t.center)

    def _check(self, t: Transform) -> str:
        if not np.isfinite(t.matrix).all() or not math.isfinite(t.quality):
            return "the registration did not converge"
        if t.quality < self.min_quality:
            return f"alignment quality {t.quality:.3f} is below {self.min_quality:g}"
        if max(abs(v) for v in t.shift) > self.max_shift * max(self.reference_size_):
            return f"the part is shifted by {t.shift[0]:.0f}, {t.shift[1]:.0f} pixels"
        if abs(t.angle) > self.max_angle:
            return f"the part is rotated by {t.angle:.1f} degrees"
        if abs(t.scale - 1) > self.max_scale:
            return f"the part is scaled by {t.scale:.3f}"
        return ""

    # ------------------------------------------------------------------ warping

    def warp(self, image: np.ndarray, t: Transform) -> tuple[np.ndarray, np.ndarray]:
        """`image` brought onto the reference (at its full size), and where it is covered
        (False where the warp left no photo: those pixels are not inspected)."""
        cv2 = cv2_module()
        size = self.reference_size_
        array = np.asarray(image)
        warped = cv2.warpPerspective(
            array, t.matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )  # no black blended into the edge pixels
        ones = np.ones(array.shape[:2], np.uint8)
        covered = cv2.warpPerspective(ones, t.matrix, size, flags=cv2.INTER_NEAREST) > 0
        return warped, covered

    def to_photo(
        self, amap: np.ndarray, t: Transform, photo_size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """A map at the reference's size brought back onto the photo (`photo_size` (width,
        height)), and where the photo lies outside the reference (not inspected)."""
        cv2 = cv2_module()
        back = np.linalg.inv(t.matrix)
        values = np.asarray(amap, np.float32)
        mapped = cv2.warpPerspective(values, back, photo_size, flags=cv2.INTER_LINEAR)
        ones = np.ones(values.shape[:2], np.uint8)
        inside = cv2.warpPerspective(ones, back, photo_size, flags=cv2.INTER_NEAREST) > 0
        return mapped, inside


def _nearest_similarity(matrix: np.ndarray) -> np.ndarray:
    """The rotation + uniform scale + shift closest to an affine matrix (polar decomposition)."""
    a = matrix[:2, :2]
    u, s, vt = np.linalg.svd(a)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        u[:, -1] *= -1
        rotation = u @ vt
    out = np.eye(3)
    out[:2, :2] = rotation * float(s.mean())
    out[:2, 2] = matrix[:2, 2]
    return out


def typical_image(images: Sequence[ImageInput]) -> ImageInput:
    """The image closest (mean squared difference of 64-pixel thumbnails) to the pixel-wise
    median of up to REFERENCE_SAMPLE evenly spread images of the most common size."""
    if not len(images):
        raise PadimError("alignment needs at least one good image to choose a reference")
    step = max(1, len(images) // REFERENCE_SAMPLE)
    sample = list(images[::step])[:REFERENCE_SAMPLE]
    thumbs = [_resize(to_gray(np.asarray(as_image(i).convert("RGB"))), 64)[0] for i in sample]
    shapes = [t.shape for t in thumbs]
    common = max(set(shapes), key=shapes.count)
    keep = [i for i, t in enumerate(thumbs) if t.shape == common]
    median = np.median(np.stack([thumbs[i] for i in keep]), axis=0)
    best = min(keep, key=lambda i: float(np.square(thumbs[i] - median).mean()))
    return sample[best]
