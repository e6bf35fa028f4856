"""`FeedbackBook`: what operators say about the records: a false alarm (the part was good), a
confirmed defect, or a defect the model missed (optionally with a mask of it). Each label is
kept with its author and time, as an audit event too; the newest label of a record counts.
The record's image is pinned (never pruned by the retention rule): retraining and the gate use
it. A good verdict's image is usually not kept, so a missed defect comes with its image, which
must be the recorded one (same SHA-256)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from padim.data.images import decode_image
from padim.errors import NotFound, PadimError
from padim.files import write_atomic
from padim.lifecycle.audit import audit
from padim.lifecycle.database import Catalogue
from padim.lifecycle.records import add_usage
from padim.lifecycle.schema import feedback, kept_images, records
from padim.options import FEEDBACK_LABELS

FALSE_ALARM, DEFECT, MISSED = FEEDBACK_LABELS
ALLOWED = {  # label -> the verdicts it can correct or confirm
    FALSE_ALARM: ("anomalous", "cannot_align"),
    DEFECT: ("anomalous", "cannot_align"),
    MISSED: ("good",),
}


@dataclass(frozen=True)
class Labelled:
    """A record with its newest label: what retraining and the gate read."""

    record_id: int
    product: str
    version: int | None
    verdict: str
    score: float
    label: str
    image: Path  # the pinned image
    mask: Path | None
    author: str
    image_id: int | None = None  # a defect image of the product (the studio's), not a record

    @property
    def is_defect(self) -> bool:
        return self.label != FALSE_ALARM


class FeedbackBook:
    """Gives and reads the feedback of `catalogue` (see the module's docstring)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def give(
        self,
        record_id: int,
        label: str,
        author: str,
        note: str = "",
        image: bytes | None = None,
        mask: bytes | None = None,
        suffix: str = ".png",
    ) -> dict[str, Any]:
        """Label a record (its image pinned, sent along when it was not kept); the feedback."""
        if label not in FEEDBACK_LABELS:
            raise PadimError(f"label {label!r}: one of {', '.join(FEEDBACK_LABELS)}")
        with self.catalogue.engine.begin() as conn:
            record = conn.execute(select(records).where(records.c.id == record_id)).first()
            if record is None:
                raise NotFound(f"no record {record_id}")
            if record.verdict not in ALLOWED[label]:
                raise PadimError(
                    f"record {record_id} was judged {record.verdict}: it cannot be a {label} "
                    f"(that label is for {' or '.join(ALLOWED[label])} verdicts)"
                )
            self._pin(conn, record, image, suffix)
            mask_path = self._mask(record_id, mask) if mask is not None else None
            now = datetime.now(UTC)
            row = {"record_id": record_id, "label": label, "author": author, "at": now}
            row |= {"note": note, "mask": mask_path}
            new_id = conn.execute(insert(feedback).values(**row)).inserted_primary_key
            detail = {"record": record_id, "label": label, "verdict": record.verdict}
            audit(conn, author, "feedback", record.product, detail)
        assert new_id is not None
        return {"id": int(new_id[0]), **row, "at": now.isoformat()}

    def _pin(self, conn: Connection, record: Any, image: bytes | None, suffix: str) -> None:
        kept = conn.execute(
            select(kept_images.c.record_id).where(kept_images.c.record_id == record.id)
        ).first()
        if kept is not None:
            conn.execute(
                update(kept_images).where(kept_images.c.record_id == record.id).values(pinned=True)
            )
            return
        if image is None:
            raise PadimError(
                f"record {record.id}'s image was not kept (good verdicts are sampled): send "
                "the image with the feedback"
            )
        if hashlib.sha256(image).hexdigest() != record.image_sha256:
            raise PadimError(f"that is not the image of record {record.id} (SHA-256 differs)")
        relative = f"{record.product}/feedback/{record.id}-{secrets.token_hex(4)}{suffix}"
        path = self.catalogue.images / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_bytes(image))
        row = {"record_id": record.id, "path": relative, "bytes": len(image)}
        conn.execute(insert(kept_images).values(**row, anomalous=False, pinned=True))
        add_usage(conn, len(image))

    def _mask(self, record_id: int, data: bytes) -> str:
        decode_image(data, "mask")  # a clear error for anything but an image
        relative = f"masks/{record_id}-{secrets.token_hex(4)}.png"
        path = self.catalogue.images / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_bytes(data))
        return relative

    def labelled(self, product: str) -> list[Labelled]:
        """The product's records with feedback, each with its newest label, oldest first."""
        newest = (
            select(func.max(feedback.c.id).label("id")).group_by(feedback.c.record_id).subquery()
        )
        query = (
            select(
                records.c.id,
                records.c.product,
                records.c.version,
                records.c.verdict,
                records.c.score,
                feedback.c.label,
                feedback.c.mask,
                feedback.c.author,
                kept_images.c.path,
            )
            .join(newest, newest.c.id == feedback.c.id)
            .join(records, records.c.id == feedback.c.record_id)
            .join(kept_images, kept_images.c.record_id == records.c.id)
            .where(records.c.product == product)
            .order_by(records.c.id)
        )
        with self.catalogue.engine.connect() as conn:
            rows = conn.execute(query).all()
        images = self.catalogue.images
        return [
            Labelled(
                r.id,
                r.product,
                r.version,
                r.verdict,
                r.score,
                r.label,
                images / r.path,
                None if r.mask is None else images / r.mask,
                r.author,
            )
            for r in rows
        ]

    def listing(self, product: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Every label given (newest first), with its record's product and verdict."""
        query = (
            select(*feedback.c, records.c.product, records.c.verdict)
            .join(records, records.c.id == feedback.c.record_id)
            .order_by(feedback.c.id.desc())
            .limit(limit)
        )
        if product is not None:
            query = query.where(records.c.product == product)
        with self.catalogue.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        return [{**r, "at": r["at"].isoformat()} for r in rows]
