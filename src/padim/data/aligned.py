"""Aligned photos in the model's pipelines: `AlignedItem` (a photo registered onto the
reference when it is read, keeping its transform) and `AlignedGeometry` (how its maps and
regions get back onto the photo). Torch-free."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from padim.data.align import Aligner, Transform
from padim.data.images import ImageInput, as_image
from padim.data.preprocess import Preprocess
from padim.data.regions import Region, find_regions


class AlignedItem:
    """A photo to be aligned when it is read (a lazy image, like a video frame): the model's
    input pipelines read it as the aligned image and it keeps the transform and the photo's
    size for the results."""

    def __init__(self, source: ImageInput, aligner: Aligner) -> None:
        self.source = source
        self.aligner = aligner
        self.transform: Transform | None = None
        self.photo_size: tuple[int, int] | None = None

    def load_image(self) -> Image.Image:
        photo = as_image(self.source)
        self.photo_size = photo.size
        aligned, self.transform = self.aligner.align(photo)
        return aligned

    def __repr__(self) -> str:
        return f"AlignedItem({self.source!r})"


def photo_geometry(
    pre: Preprocess, aligner: Aligner | None, transform: Transform | None
) -> Preprocess | AlignedGeometry:
    """How a scored photo's maps get back onto it: the model geometry alone, or (a model that
    aligns, a photo that was registered) through the inverse of the photo's transform."""
    if aligner is None or transform is None:
        return pre
    return AlignedGeometry(pre, aligner, transform)


@dataclass(frozen=True)
class AlignedGeometry:
    """How one aligned photo's maps get back onto it: the model geometry (`pre`) up to the
    reference's size, then the inverse of the photo's transform. Same interface as
    `Preprocess` for `decide` and the pictures; photo pixels the reference does not cover are
    not inspected (`uninspected`)."""

    pre: Preprocess
    aligner: Aligner
    transform: Transform

    def map_to_image(self, amap: np.ndarray, image_wh: tuple[int, int]) -> np.ndarray:
        """An (H, W) map at the model input -> the photo's (h, w); uninspected pixels get the
        map's minimum (no evidence)."""
        on_reference = self.pre.map_to_image(amap, self.aligner.reference_size_)
        mapped, inside = self.aligner.to_photo(on_reference, self.transform, image_wh)
        mapped[~inside] = float(on_reference.min())
        return mapped

    def uninspected(self, image_wh: tuple[int, int]) -> np.ndarray:
        """(h, w) bool: photo pixels outside the reference frame (nothing was scored there)."""
        ones = np.ones(self.aligner.reference_size_[::-1], np.float32)
        return ~self.aligner.to_photo(ones, self.transform, image_wh)[1]

    def regions(
        self,
        amap: np.ndarray,
        threshold: float,
        image_wh: tuple[int, int],
        min_area: int = 0,
        normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> list[Region]:
        """Defect regions found on the map brought onto the photo (any transform keeps them
        whole), in the photo's pixels."""
        return find_regions(self.map_to_image(amap, image_wh), threshold, min_area, normalise)
