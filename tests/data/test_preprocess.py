"""Input geometry: any aspect ratio (width x height), crops, automatic sizes, masks that follow."""

import numpy as np
import pytest
from PIL import Image

from padim.data.preprocess import (
    Preprocess,
    auto_size,
    default_crop,
    parse_size,
    resolve_crop,
    to_json,
)
from padim.errors import PadimError


def test_width_by_height_images_and_masks():
    pre = Preprocess((96, 40), None)
    arr = np.zeros((200, 500, 3), np.uint8)
    arr[80:120, 200:300] = 255
    mask = np.zeros((200, 500), bool)
    mask[80:120, 200:300] = True
    x, m = pre.image(Image.fromarray(arr)), pre.mask(mask)
    assert x.shape == (3, 40, 96) and m.shape == (40, 96) and pre.output_hw == (40, 96)
    bright = x[0] > 0.5
    assert (bright & m).sum() / m.sum() > 0.8


@pytest.mark.parametrize(
    ("size", "crop"), [((96, 40), (80, 32)), ((64, 128), None), ((101, 37), (99, 36))]
)
def test_masks_follow_torch_nearest_on_any_aspect(size, crop):
    import torch
    import torch.nn.functional as F

    mask = np.random.default_rng(0).random((77, 190)) > 0.6
    t = torch.from_numpy(mask.astype(np.uint8))[None, None]
    w, h = size
    expected = F.interpolate(t, size=(h, w), mode="nearest")[0, 0].numpy() > 0
    if crop is not None:
        cw, ch = crop
        top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
        expected = expected[top : top + ch, left : left + cw]
    assert np.array_equal(Preprocess(size, crop).mask(mask), expected)


def test_square_geometry_is_unchanged():
    """Square sizes keep their int form, the paper's crop default and their pixels."""
    pre = Preprocess(256, 224)
    assert pre.output_hw == (224, 224) and to_json(pre.output_wh) == 224
    assert (
        default_crop(256) == 224 and default_crop(128) is None and default_crop((400, 160)) is None
    )
    assert resolve_crop(256, "default") == 224 and resolve_crop((400, 160), "default") is None


def test_parse_and_auto_sizes():
    assert parse_size("256") == 256 and parse_size("400x160") == (400, 160)
    with pytest.raises(PadimError):
        parse_size("400x")
    assert auto_size([(1130, 460)] * 5) == (400, 160)  # BSData ball-screw crops
    assert auto_size([(500, 1250)]) == (160, 400)  # a tall commutator strip
    assert auto_size([(800, 600)]) == (288, 224)
    w, h = auto_size([(640, 480), (1920, 1080), (1000, 1000)])  # the median aspect: 4:3
    assert (w, h) == (288, 224)


def test_bad_geometries_are_one_line_errors():
    with pytest.raises(PadimError, match="--crop"):
        Preprocess((96, 40), (100, 32))
    with pytest.raises(PadimError, match="--size"):
        Preprocess((96, 8), None)
