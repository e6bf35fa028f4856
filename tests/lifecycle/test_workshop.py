"""The studio's product images (`padim.lifecycle.workshop`), on SQLite and PostgreSQL: products
made once, images added once (by content), non-images refused in one line each, the stable
train/test split, sizes and defect types counted, masks checked and stored as 0/255, and
near-duplicates found where a coarse hash would call every part on a line the same."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import encoded, texture, with_defect
from PIL import Image

from padim.errors import NotFound, PadimError
from padim.lifecycle.workshop import (
    DEFECT,
    GOOD,
    TEST,
    TRAIN,
    NewImage,
    Workshop,
    fingerprint,
    near_duplicates,
    split_of,
)

PIXELS = 50_000_000


@pytest.fixture
def shop(catalogue) -> Workshop:
    shop = Workshop(catalogue)
    shop.create("widget", "ana")
    return shop


def goods(n: int, seed: int = 0, size: int = 96) -> list[NewImage]:
    rng = np.random.default_rng(seed)
    return [NewImage(f"g{i}.png", encoded(texture(rng, size))) for i in range(n)]


def test_products_are_made_once_with_checked_names(shop):
    with pytest.raises(PadimError, match="exists already"):
        shop.create("widget", "ana")
    with pytest.raises(PadimError):
        shop.create("bad/name", "ana")
    with pytest.raises(NotFound, match="create it first"):
        shop.add("nothing", goods(1), GOOD, "ana", PIXELS)
    assert [p["product"] for p in shop.products()] == ["widget"]


def test_images_are_added_once_and_bad_ones_refused_in_one_line(shop):
    first = shop.add("widget", goods(12), GOOD, "ana", PIXELS)
    assert len(first["added"]) == 12 and not first["skipped"] and not first["refused"]
    again = [*goods(3), NewImage("notes.txt", b"not an image"), NewImage("empty.png", b"")]
    second = shop.add("widget", again, GOOD, "ana", PIXELS)
    assert second["added"] == [] and second["skipped"] == ["g0.png", "g1.png", "g2.png"]
    assert [r["name"] for r in second["refused"]] == ["notes.txt", "empty.png"]
    assert all("\n" not in r["error"] for r in second["refused"])
    with pytest.raises(PadimError, match="kind"):
        shop.add("widget", goods(1, seed=5), "maybe", "ana", PIXELS)
    rows = shop.images("widget")
    assert len(rows) == 12
    for row in rows:  # files and thumbnails on disk, the split the digest says
        assert shop.file_of(row["id"]).read_bytes()[:4] == b"\x89PNG"
        assert shop.file_of(row["id"], "thumb").is_file()
        assert row["split"] == split_of(row["sha256"], GOOD) and row["split"] in (TRAIN, TEST)
    summary = shop.summary("widget")
    assert summary["sizes"] == [{"width": 96, "height": 96, "count": 12}]
    c = summary["counts"]
    assert c["good_train"] + c["good_test"] == 12 and c["defect"] == 0


def test_the_split_is_stable_and_a_fifth_is_test():
    import hashlib

    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5000)]
    tests = [split_of(d, GOOD) == TEST for d in digests]
    assert 0.18 < np.mean(tests) < 0.22
    assert [split_of(d, GOOD) for d in digests] == [split_of(d, GOOD) for d in digests]
    assert {split_of(d, DEFECT) for d in digests} == {TEST}


def test_defects_keep_their_type_and_a_checked_mask(shop):
    rng = np.random.default_rng(3)
    image, mask = with_defect(texture(rng, 96), rng)
    small = np.zeros((10, 10), np.uint8)
    bad = shop.add(
        "widget",
        [NewImage("d.png", encoded(image), "scratch", encoded(small))],
        DEFECT,
        "ana",
        PIXELS,
    )
    assert "the mask is 10x10, the image 96x96" in bad["refused"][0]["error"]
    grey = (mask > 0).astype(np.uint8) * 7  # any non-zero value is the defect
    added = shop.add(
        "widget",
        [NewImage("d.png", encoded(image), "scratch", encoded(grey))],
        DEFECT,
        "ana",
        PIXELS,
    )
    row = shop.image(added["added"][0])
    assert row["defect_type"] == "scratch" and row["split"] == TEST
    stored = np.asarray(Image.open(shop.file_of(row["id"], "mask")))
    assert set(np.unique(stored)) <= {0, 255} and ((stored > 0) == (mask > 0)).all()
    with pytest.raises(PadimError, match="only defects"):
        shop.set_mask(shop.add("widget", goods(1, 9), GOOD, "ana", PIXELS)["added"][0],
                      encoded(grey), "ana")  # fmt: skip
    assert shop.summary("widget")["defect_types"] == {"scratch": 1}
    shop.remove(row["id"], "ana")
    with pytest.raises(NotFound):
        shop.image(row["id"])


def test_near_duplicates_are_the_same_view_not_the_same_kind_of_part():
    rng = np.random.default_rng(0)
    base = texture(rng, 256)
    others = [texture(rng, 256) for _ in range(6)]  # the same pattern, other noise: parts
    resaved = Image.open(io.BytesIO(encoded(base, "JPEG", quality=90)))  # a re-saved copy
    prints = [fingerprint(Image.fromarray(a)) for a in [base, *others]] + [fingerprint(resaved)]
    groups = near_duplicates(list(range(8)), prints)
    assert groups == [[0, 7]]


def test_summary_and_near_duplicates_of_a_product(shop):
    rng = np.random.default_rng(1)
    base = texture(rng, 128)
    copy = encoded(base, "JPEG", quality=95)
    shop.add("widget", [NewImage("a.png", encoded(base)), NewImage("b.jpg", copy)], GOOD, "ana",
             PIXELS)  # fmt: skip
    shop.add("widget", goods(4, seed=8, size=128), GOOD, "ana", PIXELS)
    ids = [r["id"] for r in shop.images("widget")]
    assert shop.near_duplicates("widget") == [ids[:2]]
    assert shop.summary("widget")["bytes"] > 0
