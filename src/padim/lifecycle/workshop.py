"""`Workshop`: the studio's images of a product, kept in the catalogue.

Good images are what a version is trained on, defective ones (with a defect type and, when
drawn, a mask) what it is judged on. Every good image is put in the train or the test split by
its SHA-256 (a fifth go to test), so the split never changes as images are added and two
versions are always judged on the same held-out images. Each image keeps its size and a
fingerprint of its fine detail (a high-pass 64x64 grey thumbnail): the studio shows the sizes
and the near-duplicates (fingerprints correlated above NEAR_CORRELATION: the same view, maybe
re-saved or resized, which makes a test image a copy of a training one). Coarse perceptual
hashes cannot tell one part on a line from the next: they all look alike at 8x8. Files live
under the catalogue's files folder (`products/<product>/`), written atomically before their
row is committed.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from padim.data.images import IMAGE_EXTENSIONS, decode_image
from padim.errors import BadImage, NotFound, PadimError
from padim.files import write_bytes_atomic
from padim.lifecycle.audit import audit
from padim.lifecycle.database import Catalogue
from padim.lifecycle.registry import Registry, checked_name
from padim.lifecycle.schema import product_images, products

GOOD, DEFECT = "good", "defect"
TRAIN, TEST = "train", "test"
TEST_SHARE = 5  # one good image in TEST_SHARE goes to the test split
NEAR_CORRELATION = 0.985  # a JPEG copy at half size correlates ~0.99 with its original
FINGERPRINT_SIDE = 64
THUMB_SIDE = 160


@dataclass(frozen=True)
class NewImage:
    """An image to add: its file name and bytes, and for a defect its type and mask."""

    name: str
    data: bytes
    defect_type: str = ""
    mask: bytes | None = None


def split_of(sha256: str, kind: str) -> str:
    """Defects are for judging; a good image's split follows from its digest (stable)."""
    if kind == DEFECT:
        return TEST
    return TEST if int(sha256[:8], 16) % TEST_SHARE == 0 else TRAIN


def fingerprint(image: Image.Image) -> bytes:
    """The image's fine detail: a 64x64 grey thumbnail minus its blur, unit norm, as int8."""
    side = FINGERPRINT_SIDE
    grey = image.convert("L").resize((side, side), Image.Resampling.BOX)
    detail = np.asarray(grey, np.float32) - np.asarray(
        grey.filter(ImageFilter.BoxBlur(1)), np.float32
    )
    v = detail.flatten() - detail.mean()
    return np.round(v * (127 / max(float(np.abs(v).max()), 1e-6))).astype(np.int8).tobytes()


def near_duplicates(
    ids: list[int], prints: list[bytes], level: float = NEAR_CORRELATION
) -> list[list[int]]:
    """Groups of image ids whose fingerprints correlate above `level` (each listed once)."""
    if len(ids) < 2:
        return []
    f = np.stack([np.frombuffer(p, np.int8) for p in prints]).astype(np.float32)
    f /= np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-6)
    close = (f @ f.T) >= level
    np.fill_diagonal(close, False)
    groups, seen = [], set()
    for i in np.flatnonzero(close.any(axis=1)):
        if i in seen:
            continue
        members = [int(j) for j in np.flatnonzero(close[i]) if j not in seen] + [int(i)]
        seen.update(members)
        groups.append(sorted(ids[j] for j in members))
    return groups


class Workshop:
    """A catalogue's product images (see the module's docstring)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    # ------------------------------------------------------------------ products

    def create(self, product: str, actor: str) -> None:
        """A new, empty product (its versions come from training)."""
        checked_name("product", product)
        try:
            with self.catalogue.engine.begin() as conn:
                conn.execute(insert(products).values(name=product, created_at=_now()))
                audit(conn, actor, "create_product", product, {})
        except IntegrityError:
            raise PadimError(f"product {product!r} exists already") from None

    def products(self) -> list[dict[str, Any]]:
        """Every product with its image counts."""
        counts: dict[str, Counter] = {}
        query = select(
            product_images.c.product,
            product_images.c.kind,
            product_images.c.split,
            func.count(),
        ).group_by(product_images.c.product, product_images.c.kind, product_images.c.split)
        with self.catalogue.engine.connect() as conn:
            for product, kind, split, n in conn.execute(query):
                counts.setdefault(product, Counter())[f"{kind}_{split}"] = n
        names = Registry(self.catalogue).products()
        return [{"product": p, "counts": counts_of(counts.get(p, Counter()))} for p in names]

    def check_product(self, product: str) -> None:
        if product not in Registry(self.catalogue).products():
            raise NotFound(f"no product {product!r} (create it first)")

    # ------------------------------------------------------------------ images

    def add(
        self, product: str, images: list[NewImage], kind: str, actor: str, max_pixels: int
    ) -> dict[str, Any]:
        """Add images; one already in the product is skipped, one that is no image refused.
        Returns the added ids, the skipped names and the refused (name, why)."""
        if kind not in (GOOD, DEFECT):
            raise PadimError(f"kind must be {GOOD} or {DEFECT}, not {kind!r}")
        self.check_product(product)
        added: list[int] = []
        skipped: list[str] = []
        refused: list[dict[str, str]] = []
        for image in images:
            try:
                found = self._add_one(product, image, kind, actor, max_pixels)
            except (BadImage, PadimError) as exc:
                refused.append({"name": image.name, "error": str(exc)})
                continue
            if found is None:
                skipped.append(image.name)
            else:
                added.append(found)
        if added:
            with self.catalogue.engine.begin() as conn:
                audit(conn, actor, "add_images", product, {"kind": kind, "count": len(added)})
        return {"added": added, "skipped": skipped, "refused": refused}

    def _add_one(
        self, product: str, new: NewImage, kind: str, actor: str, max_pixels: int
    ) -> int | None:
        picture = decode_image(new.data, new.name, max_pixels)
        sha = hashlib.sha256(new.data).hexdigest()
        suffix = Path(new.name).suffix.lower()
        suffix = suffix if suffix in IMAGE_EXTENSIONS else ".png"
        folder = Path("products") / product
        path = folder / "images" / f"{sha}{suffix}"
        with self.catalogue.engine.connect() as conn:
            there = conn.execute(
                select(product_images.c.id).where(
                    product_images.c.product == product, product_images.c.sha256 == sha
                )
            ).scalar()
        if there is not None:
            return None
        mask = None if new.mask is None else self._write_mask(product, sha, new.mask, picture.size)
        write_bytes_atomic(self.catalogue.files / path, new.data)
        self._write_thumb(product, sha, picture)
        row = {
            "product": product,
            "kind": kind,
            "defect_type": checked_type(new.defect_type) if kind == DEFECT else "",
            "split": split_of(sha, kind),
            "name": Path(new.name).name[:500] or "image",
            "sha256": sha,
            "path": str(path),
            "mask": mask,
            "width": picture.width,
            "height": picture.height,
            "bytes": len(new.data),
            "fingerprint": fingerprint(picture),
            "added_by": actor,
            "added_at": _now(),
        }
        try:
            with self.catalogue.engine.begin() as conn:
                key = conn.execute(insert(product_images).values(**row)).inserted_primary_key
        except IntegrityError:  # added by someone else meanwhile
            return None
        assert key is not None
        return int(key[0])

    def _write_thumb(self, product: str, sha: str, picture: Image.Image) -> None:
        thumb = picture.copy()
        thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buffer = io.BytesIO()
        thumb.save(buffer, "JPEG", quality=80)
        write_bytes_atomic(self.thumb_path(product, sha), buffer.getvalue())

    def thumb_path(self, product: str, sha: str) -> Path:
        return self.catalogue.files / "products" / product / "thumbs" / f"{sha}.jpg"

    def _write_mask(self, product: str, sha: str, data: bytes, size: tuple[int, int]) -> str:
        mask = decode_image(data, "mask").convert("L")
        if mask.size != size:
            raise PadimError(
                f"the mask is {mask.size[0]}x{mask.size[1]}, the image {size[0]}x{size[1]}"
            )
        binary = Image.fromarray(((np.asarray(mask) > 0) * 255).astype(np.uint8))
        buffer = io.BytesIO()
        binary.save(buffer, "PNG")
        path = Path("products") / product / "masks" / f"{sha}.png"
        write_bytes_atomic(self.catalogue.files / path, buffer.getvalue())
        return str(path)

    def set_mask(self, image_id: int, data: bytes, actor: str) -> dict[str, Any]:
        """Draw (replace) a defect's mask."""
        row = self.image(image_id)
        if row["kind"] != DEFECT:
            raise PadimError(f"image {image_id} is a good image: only defects have masks")
        mask = self._write_mask(row["product"], row["sha256"], data, (row["width"], row["height"]))
        with self.catalogue.engine.begin() as conn:
            conn.execute(
                product_images.update().where(product_images.c.id == image_id).values(mask=mask)
            )
            audit(conn, actor, "draw_mask", row["product"], {"image": image_id})
        return self.image(image_id)

    def remove(self, image_id: int, actor: str) -> None:
        """Take an image out of the product (its files stay: versions may name them)."""
        row = self.image(image_id)
        with self.catalogue.engine.begin() as conn:
            conn.execute(delete(product_images).where(product_images.c.id == image_id))
            audit(
                conn,
                actor,
                "remove_image",
                row["product"],
                {"image": image_id, "name": row["name"]},
            )

    def image(self, image_id: int) -> dict[str, Any]:
        with self.catalogue.engine.connect() as conn:
            row = conn.execute(
                select(product_images).where(product_images.c.id == image_id)
            ).first()
        if row is None:
            raise NotFound(f"no image {image_id}")
        return as_dict(row)

    def file_of(self, image_id: int, what: str = "image") -> Path:
        """The image, its thumbnail or its mask on disk."""
        row = self.image(image_id)
        if what == "thumb":
            return self.thumb_path(row["product"], row["sha256"])
        if what == "mask":
            if row["mask"] is None:
                raise NotFound(f"image {image_id} has no mask")
            return self.catalogue.files / row["mask"]
        return self.catalogue.files / row["path"]

    def images(
        self,
        product: str,
        kind: str | None = None,
        split: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """A product's images, oldest first."""
        query = select(product_images).where(product_images.c.product == product)
        if kind is not None:
            query = query.where(product_images.c.kind == kind)
        if split is not None:
            query = query.where(product_images.c.split == split)
        query = query.order_by(product_images.c.id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self.catalogue.engine.connect() as conn:
            return [as_dict(row) for row in conn.execute(query)]

    def paths(self, rows: list[dict[str, Any]]) -> list[Path]:
        return [self.catalogue.files / r["path"] for r in rows]

    def summary(self, product: str) -> dict[str, Any]:
        """Counts by kind and split, masks, bytes, the image sizes and the defect types."""
        self.check_product(product)
        query = select(
            product_images.c.id,
            product_images.c.kind,
            product_images.c.split,
            product_images.c.defect_type,
            product_images.c.width,
            product_images.c.height,
            product_images.c.bytes,
            product_images.c.mask,
        ).where(product_images.c.product == product)
        with self.catalogue.engine.connect() as conn:
            rows = [r._mapping for r in conn.execute(query.order_by(product_images.c.id))]
        sizes = Counter((r["width"], r["height"]) for r in rows)
        types = Counter(r["defect_type"] for r in rows if r["kind"] == DEFECT)
        return {
            "product": product,
            "counts": counts_of(Counter(f"{r['kind']}_{r['split']}" for r in rows)),
            "masks": sum(1 for r in rows if r["mask"]),
            "bytes": sum(r["bytes"] for r in rows),
            "sizes": [{"width": w, "height": h, "count": n} for (w, h), n in sizes.most_common()],
            "defect_types": dict(types),
        }

    def version_key(self, product: str) -> tuple[int, int]:
        """(count, newest id) of the product's images: changes whenever they do."""
        query = select(func.count(), func.max(product_images.c.id)).where(
            product_images.c.product == product
        )
        with self.catalogue.engine.connect() as conn:
            n, newest = conn.execute(query).one()
        return int(n), int(newest or 0)

    def near_duplicates(self, product: str) -> list[list[int]]:
        """Groups of the product's images that are the same view (see `near_duplicates`)."""
        query = select(product_images.c.id, product_images.c.fingerprint).where(
            product_images.c.product == product
        )
        with self.catalogue.engine.connect() as conn:
            rows = conn.execute(query.order_by(product_images.c.id)).all()
        return near_duplicates([r[0] for r in rows], [r[1] for r in rows])


def counts_of(counter: Counter) -> dict[str, int]:
    return {
        "good_train": counter.get("good_train", 0),
        "good_test": counter.get("good_test", 0),
        "defect": counter.get("defect_test", 0),
    }


def checked_type(name: str) -> str:
    name = (name or "defect").strip()
    if len(name) > 100 or any(ord(c) < 32 for c in name):
        raise PadimError("a defect type is at most 100 printable characters")
    return name


def as_dict(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out.pop("fingerprint", None)
    out["added_at"] = out["added_at"].isoformat()
    return out


def _now() -> datetime:
    return datetime.now(UTC)
