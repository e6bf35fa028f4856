"""Perturbations for robustness evaluation: the paper's non-aligned "Rd-MVTec AD" protocol.

Defard et al. rotate each image by a random angle in [-10, +10] degrees and take a random
224 x 224 crop of the 256 x 256 image, on both the training and the test images; ground-truth
masks get their image's transform. Two variants:

- `rd-mvtec`: the paper's protocol (a model fitted on perturbed training images, evaluated
  on perturbed test images);
- `rd-mvtec-test`: the aligned model evaluated on perturbed test images (what a deployed
  model sees when parts arrive misplaced).

Every draw is seeded by (seed, stream, image index): reproducible image by image, and the
training and test streams never share draws.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from padim.data.datasets import read_mask
from padim.data.images import ImageInput, as_image, read_image
from padim.data.pictures import to_picture
from padim.data.preprocess import Preprocess
from padim.errors import PadimError
from padim.model.fitting import Loader

PERTURBATIONS = ("rd-mvtec", "rd-mvtec-test")
TEST_STREAM, TRAIN_STREAM = 0, 1
PAPER_CROP_FRACTION = 224 / 256


@dataclass(frozen=True)
class RandomRotateCrop:
    """Rotate by U(-max_degrees, max_degrees), then crop a random square of `crop_fraction`
    of the side and resize it to the model's input size (a no-op at the paper's 256/224)."""

    name: str = "rd-mvtec"
    max_degrees: float = 10.0
    crop_fraction: float = PAPER_CROP_FRACTION
    seed: int = 0
    train: bool = True  # also perturb the training images (the paper's protocol)
    stream: int = TEST_STREAM
    side: int = 256  # the protocol's image side (the model's resize): where crops are drawn

    def for_training(self) -> RandomRotateCrop:
        return dataclasses.replace(self, stream=TRAIN_STREAM)

    def draw(self, index: int, side: int) -> tuple[float, int, int, int]:
        """The angle and crop box (top, left, crop side) for image `index`."""
        rng = np.random.default_rng([self.seed, self.stream, index])
        angle = float(rng.uniform(-self.max_degrees, self.max_degrees))
        crop = max(1, round(side * self.crop_fraction))
        top, left = (int(v) for v in rng.integers(0, side - crop + 1, size=2))
        return angle, top, left, crop

    def apply(
        self, index: int, image: torch.Tensor, mask: torch.Tensor | None, out_size: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """image (3, S, S) float, mask (S, S) bool -> both at out_size, transformed alike."""
        import torchvision.transforms.functional as TF  # only runs that perturb pay its import

        angle, top, left, crop = self.draw(index, image.shape[-1])
        img = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
        img = img[:, top : top + crop, left : left + crop]
        if crop != out_size:
            img = TF.resize(img, [out_size, out_size], antialias=True)
        if mask is None:
            return img, None
        m = TF.rotate(
            mask[None].to(torch.uint8), angle, interpolation=TF.InterpolationMode.NEAREST, fill=0.0
        )
        m = m[:, top : top + crop, left : left + crop]
        if crop != out_size:
            m = TF.resize(m, [out_size, out_size], interpolation=TF.InterpolationMode.NEAREST)
        return img, m[0] > 0


def make_perturbation(name: str, size: object, crop: object, seed: int = 0) -> RandomRotateCrop:
    """The named perturbation for a model's geometry (crop fraction = crop/size when the model
    centre-crops, the paper's 224/256 otherwise); the paper's protocol is for square inputs."""
    if name not in PERTURBATIONS:
        raise PadimError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    if not isinstance(size, int) or not (crop is None or isinstance(crop, int)):
        raise PadimError(f"--perturb {name} needs a square geometry (--size N, --crop N|none)")
    fraction = crop / size if crop is not None else PAPER_CROP_FRACTION
    return RandomRotateCrop(
        name=name, crop_fraction=fraction, seed=seed, train=name == "rd-mvtec", side=size
    )


def perturbed_sample(
    perturbation: RandomRotateCrop, pre: Preprocess, index: int, image_path, mask_path
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read one test image (and mask), resize to the model's size, perturb, return tensors at
    the model's input geometry."""
    source = Preprocess(pre.size, None)
    image = torch.from_numpy(source.image(read_image(image_path)))
    mask = None if mask_path is None else torch.from_numpy(source.mask(read_mask(mask_path)))
    return perturbation.apply(index, image, mask, pre.output_hw[0])


def training_loader(perturbation: RandomRotateCrop, pre: Preprocess) -> Loader:
    """A `Padim.fit` loader that perturbs training image `index` from the training stream."""
    train = perturbation.for_training()
    source = Preprocess(pre.size, None)

    def load(index: int, item: ImageInput) -> torch.Tensor:
        image = torch.from_numpy(source.image(as_image(item)))
        return train.apply(index, image, None, pre.output_hw[0])[0]

    return load


def native_photo(
    perturbation: RandomRotateCrop, index: int, image: ImageInput, mask_path=None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Image `index` perturbed at its own resolution, as a camera would see the part moved:
    the same turn, and the crop box `draw` gives on the protocol's `side` x `side` image scaled
    to the photo's width and height; (h, w, 3) uint8 and its mask (bool) transformed alike. For
    models that align: they register the photo itself (a square resize first would distort a
    non-square photo). A photo of `side` x `side` pixels is exactly `perturbed_sample`'s."""
    side = perturbation.side
    import torchvision.transforms.functional as TF

    photo = torch.from_numpy(np.asarray(as_image(image), np.float32).transpose(2, 0, 1) / 255.0)
    h, w = photo.shape[-2:]
    angle, top, left, crop = perturbation.draw(index, side)
    y0, x0 = round(top * h / side), round(left * w / side)
    y1, x1 = y0 + round(crop * h / side), x0 + round(crop * w / side)
    turned = TF.rotate(photo, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=0.0)
    picture = to_picture(turned[:, y0:y1, x0:x1].numpy())
    if mask_path is None:
        return picture, None
    mask = torch.from_numpy(read_mask(mask_path).astype(np.uint8))[None]
    if mask.shape[-2:] != (h, w):
        mask = TF.resize(mask, [h, w], interpolation=TF.InterpolationMode.NEAREST)
    m = TF.rotate(mask, angle, interpolation=TF.InterpolationMode.NEAREST, fill=0.0)
    return picture, m[0, y0:y1, x0:x1].numpy() > 0
