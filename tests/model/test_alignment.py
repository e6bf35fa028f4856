"""A model that aligns: parts never in the same place twice are registered onto a reference
before the features. An aligned image and its moved copy score alike, maps land on the photo,
an image that cannot be aligned never says good, and the reference travels in the model file
and in exports (the alignment runs outside the graph, with parity)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2")

from conftest import moved, part, save

from padim import Padim, load
from padim.data.aligned import AlignedGeometry
from padim.data.decision import CANNOT_ALIGN

SIZE = (128, 96)


def with_defect(img: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """A dark scratch on the part's body, and its centre (x, y)."""
    out = img.copy()
    out[52:60, 70:82] = (20, 20, 20)
    return out, (76, 56)


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """Good parts, each turned and shifted a little (a part on a conveyor)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(24):
        angle, dx, dy = rng.uniform(-8, 8), *rng.uniform(-6, 6, size=2)
        out.append(moved(part(SIZE, seed=i), angle, 1.0, (dx, dy))[0])
    return out


REFERENCE = part(SIZE, seed=50)  # the part where the tests measure motions from


@pytest.fixture(scope="module")
def aligned_model(photos) -> Padim:
    # full covariance: with 24 photos (fewer than the 176 channels) its scores are the steadier
    # under resampling (docs/compact.md); the alignment is what these tests measure
    return Padim(
        size=SIZE,
        crop=None,
        align="rigid",
        align_reference=REFERENCE,
        batch_size=8,
        device="cpu",
        covariance="full",
    ).fit(photos)


def test_the_fit_aligns_its_training_images(aligned_model):
    summary = aligned_model.training_.alignment
    assert summary["sampled"] == 24 and summary["cannot_align"] == 0
    assert summary["quality"]["min"] > 0.8
    assert aligned_model.aligner_.reference_size_ == SIZE
    assert np.array_equal(aligned_model.aligner_.reference_image_, REFERENCE)
    # the quality bound is learned from the good images, just under the worst of them
    bound = aligned_model.config_.align_min_quality
    assert 0.5 <= bound < summary["quality"]["min"]


def test_an_aligned_image_and_its_moved_copy_score_alike(aligned_model, photos):
    """The same part at two poses (each photo resampled once, as the camera saw it): scores
    within 10 % when the model aligns, for a good and a defective part; without alignment
    the moved good part scores far higher (a false alarm in the making)."""
    base = part(SIZE, seed=100)
    defective, _ = with_defect(base)
    good, bad = (moved(x, 1.0, 1.0, (0.5, 0.5))[0] for x in (base, defective))
    copies = [moved(x, 7.0, 1.0, (5.0, -4.0))[0] for x in (base, defective)]
    a, b, c, d = aligned_model.predict([good, bad, *copies])
    for one, other in ((a, c), (b, d)):
        assert abs(one.score - other.score) / one.score < 0.10
    assert d.alignment["aligned"] and abs(d.alignment["angle"] - 7.0) < 0.5
    assert np.allclose(d.alignment["shift"], (5.0, -4.0), atol=1.0)
    assert not a.is_anomalous and not c.is_anomalous and b.is_anomalous and d.is_anomalous
    plain = Padim(size=SIZE, crop=None, batch_size=8, device="cpu").fit(photos)
    still, turned = plain.predict([good, copies[0]])
    assert turned.score > 1.2 * still.score


def test_maps_and_regions_land_on_the_photo(aligned_model):
    photo, (cx, cy) = with_defect(part(SIZE, seed=101))
    copy, m = moved(photo, -6.0, 1.0, (-5.0, 3.0))
    where = m @ np.array([cx, cy, 1.0])  # the defect's centre in the moved photo
    (p,) = aligned_model.predict([copy])
    assert p.is_anomalous and p.verdict == "anomalous"
    heat = p.map_on_image()
    assert heat.shape == (SIZE[1], SIZE[0])
    peak_y, peak_x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert abs(peak_x - where[0]) <= 5 and abs(peak_y - where[1]) <= 5
    box = p.regions[0]
    assert box.x <= where[0] <= box.x + box.width and box.y <= where[1] <= box.y + box.height


def test_uncovered_photo_areas_are_marked(aligned_model):
    copy = moved(part(SIZE, seed=102), 0.0, 1.0, (12.0, 0.0))[0]
    (p,) = aligned_model.predict([copy])
    assert isinstance(p.geometry, AlignedGeometry)
    hidden = p.geometry.uninspected(SIZE)
    assert hidden[:, :10].all() and not hidden[:, 14:].any()  # the part moved right: the
    # photo's left strip shows what lies left of the reference's frame


def test_an_image_that_cannot_be_aligned_never_says_good(aligned_model):
    noise = np.random.default_rng(5).integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    turned = moved(part(SIZE, seed=103), 60.0, 1.0, (0.0, 0.0))[0]  # beyond --align-max-angle
    for p in aligned_model.predict([noise, turned]):
        assert p.verdict == CANNOT_ALIGN and p.is_anomalous and p.reason
        assert not p.alignment["aligned"]
        assert p.to_dict()["verdict"] == CANNOT_ALIGN


def test_the_reference_travels_in_the_model_file(aligned_model, tmp_path):
    path = aligned_model.save(tmp_path / "aligned.safetensors")
    again = load(path)
    assert np.array_equal(again.aligner_.reference_image_, aligned_model.aligner_.reference_image_)
    photo = moved(part(SIZE, seed=104), 4.0, 1.0, (3.0, 2.0))[0]
    (a,), (b,) = aligned_model.predict([photo]), again.predict([photo])
    assert a.alignment == b.alignment
    assert abs(a.score - b.score) / a.score < 1e-3  # float16 whitening in the file


def test_exports_align_outside_the_graph_with_parity(aligned_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from padim.deploy.export import export_model
    from padim.deploy.scorers import load_scorer, score_files

    model_path = aligned_model.save(tmp_path / "m.safetensors")
    paths = [
        save(
            tmp_path / "v" / f"{i}.png",
            moved(part(SIZE, seed=110 + i), 5.0 - 3 * i, 1.0, (i, -i))[0],
        )
        for i in range(3)
    ]
    report = export_model(model_path, tmp_path / "out" / "m.onnx", verify=paths)
    assert report.max_rel_score_diff < 1e-4
    assert (tmp_path / "out" / "m.reference.png").is_file()
    scorer = load_scorer(tmp_path / "out" / "m.onnx")
    assert scorer.aligner is not None
    torch_scored = score_files(load_scorer(model_path), paths)
    onnx_scored = score_files(scorer, paths)
    for t, o in zip(torch_scored, onnx_scored, strict=True):
        assert o.transform is not None and o.transform.to_dict() == t.transform.to_dict()
        assert abs(o.score - t.score) / t.score < 1e-4


def test_update_aligns_new_images_onto_the_models_reference(photos):
    """`partial_fit` (padim update) registers new good images like the fit did: the updated
    Gaussians equal a fit on all images."""
    kwargs = dict(size=SIZE, crop=None, align="rigid", align_reference=REFERENCE, device="cpu")
    first = Padim(**kwargs, batch_size=8, statistics="keep").fit(photos[:16])
    first.partial_fit(photos[16:])
    whole = Padim(**kwargs, batch_size=8, holdout_fraction=0.0).fit(photos)
    np.testing.assert_allclose(
        first.net_.gauss_mean.numpy(), whole.net_.gauss_mean.numpy(), rtol=1e-4, atol=1e-4
    )


def test_matching_can_be_restricted_to_a_region(photos):
    """--align-roi: only the inside of the mask is matched (a fixture, a datum edge)."""
    roi = np.zeros((SIZE[1], SIZE[0]), bool)
    roi[20:76, 28:100] = True  # the part's body
    model = Padim(
        size=SIZE, crop=None, align="rigid", align_reference=REFERENCE, align_roi=roi, device="cpu"
    ).fit(photos[:8])
    assert model.aligner_.mask_ is not None and model.aligner_.mask_.mean() < 0.5
    photo = moved(part(SIZE, seed=120), 5.0, 1.0, (4.0, 2.0))[0]
    (p,) = model.predict([photo])
    assert p.alignment["aligned"] and abs(p.alignment["angle"] - 5.0) < 0.5


def test_tiling_and_a_region_of_interest_work_on_the_aligned_image(photos):
    """Tiles and the ROI apply to the image brought onto the reference (the ROI given at
    the reference's geometry): outside the ROI nothing is scored, wherever the part sat."""
    roi = np.zeros((SIZE[1], SIZE[0]), bool)
    roi[:, :48] = True  # the left part of the reference (the scratch lies at x 70-82)
    photo, _ = with_defect(part(SIZE, seed=130))
    moved_photo = moved(photo, 4.0, 1.0, (3.0, 3.0))[0]
    found = []
    for region in (None, roi):
        model = Padim(
            size=SIZE,
            crop=None,
            tile=64,
            align="rigid",
            align_reference=REFERENCE,
            roi=region,
            device="cpu",
        ).fit(photos[:10])
        assert model.tile_grid is not None
        (p,) = model.predict([moved_photo])
        assert p.alignment["aligned"]
        found.append(p.regions)
    assert found[0] and not found[1]  # found without the ROI; outside it: not reported
