"""`RecordBook`: the inspection record of every verdict, and the images kept of them.

A record (time, product, model version, score, normalised score, threshold, verdict, regions,
the image's SHA-256, where it came from) is committed before `write` returns, so a result that
was answered (acknowledged) is on disk even if the process is killed the next moment. Images
are kept by a retention rule: every image that was not good, a sample of the good ones (chosen
by digest, so every process agrees), and a disk budget: past it, the oldest good images go
first, then the oldest others. An image file is written before its record commits; a kill
between the two leaves at most one unreferenced file, never a record without its image.
"""

from __future__ import annotations

import contextlib
import csv
import io
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Connection, Select, func, insert, select, update
from sqlalchemy import delete as sql_delete

from padim import options
from padim.errors import PadimError
from padim.files import write_atomic
from padim.lifecycle.database import Catalogue
from padim.lifecycle.schema import feedback, image_usage, kept_images, records

GOOD = "good"
PRUNE_BATCH = 500  # kept images looked at per pruning transaction
COLUMNS = (
    "id",
    "at",
    "product",
    "version",
    "model_id",
    "source",
    "name",
    "score",
    "normalised_score",
    "threshold",
    "verdict",
    "n_regions",
    "regions",
    "image_sha256",
    "image",
    "feedback",
)


@dataclass(frozen=True)
class Retention:
    """Which images are kept: not-good ones always, `keep_good` of the good ones, within
    `budget_bytes` on disk."""

    keep_good: float = options.KEEP_GOOD.default
    budget_bytes: int = int(options.IMAGE_BUDGET_MB.default * (1 << 20))

    def keeps(self, verdict: str, sha256: str) -> bool:
        if verdict != GOOD:
            return True
        return int(sha256[:8], 16) < self.keep_good * 0x1_0000_0000  # stable across processes


@dataclass
class Entry:
    """One verdict to record; `image` is the image's bytes as received (or a function that
    encodes them, called only when the rule keeps it), `suffix` its file type."""

    product: str
    version: int | None
    model_id: str
    source: str
    name: str
    score: float
    normalised_score: float
    threshold: float
    verdict: str
    regions: list[dict[str, Any]]
    image_sha256: str
    image: bytes | Callable[[], bytes] | None = field(default=None, repr=False)  # or encoder
    suffix: str = ".png"


RECORDED = tuple(f.name for f in fields(Entry) if f.name not in ("image", "suffix"))


def add_usage(conn: Connection, delta: int) -> int:
    """Add `delta` bytes to the kept images' usage, in the caller's transaction; the new
    usage."""
    return int(
        conn.execute(
            update(image_usage)
            .where(image_usage.c.id == 1)
            .values(bytes=image_usage.c.bytes + delta)
            .returning(image_usage.c.bytes)
        ).scalar_one()
    )


def parse_time(text: str | None, what: str, naive_is_local: bool) -> datetime | None:
    """An ISO time (None stays None); one without a zone is the local time of this computer
    (`naive_is_local`: the command line) or UTC (the API, whose clients are elsewhere)."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise PadimError(f"{what} {text!r}: give an ISO time such as 2026-12-07T06:00") from None
    if value.tzinfo is not None:
        return value
    return value.astimezone(UTC) if naive_is_local else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Query:
    """Which records: by product, version, verdict and time (`since` <= at < `until`)."""

    product: str | None = None
    version: int | None = None
    verdict: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = 1000
    offset: int = 0


class RecordBook:
    """Writes and reads the inspection records of `catalogue` (see the module's docstring)."""

    def __init__(self, catalogue: Catalogue, retention: Retention | None = None) -> None:
        self.catalogue = catalogue
        self.retention = retention or Retention()

    # ------------------------------------------------------------------ writing

    def write(self, entries: Sequence[Entry]) -> list[int]:
        """Record `entries` in one transaction, keeping their images by the rule; the ids, once
        committed. Over the disk budget, the oldest kept images are pruned."""
        if not entries:
            return []
        now = datetime.now(UTC)
        kept = [self._keep(e, now) for e in entries]
        rows = [{name: getattr(e, name) for name in RECORDED} | {"at": now} for e in entries]
        added = sum(size for _, size in filter(None, kept))
        try:
            with self.catalogue.engine.begin() as conn:
                result = conn.execute(
                    insert(records).returning(records.c.id, sort_by_parameter_order=True), rows
                )
                ids = [int(i) for i in result.scalars()]
                images = [
                    {"record_id": i, "path": k[0], "bytes": k[1], "anomalous": e.verdict != GOOD}
                    for i, k, e in zip(ids, kept, entries, strict=True)
                    if k is not None
                ]
                usage = 0
                if images:
                    conn.execute(insert(kept_images), images)
                    usage = add_usage(conn, added)
        except BaseException:
            for k in filter(None, kept):  # not recorded: not kept
                with contextlib.suppress(OSError):
                    (self.catalogue.images / k[0]).unlink()
            raise
        if usage > self.retention.budget_bytes:
            self.prune()
        return ids

    def _keep(self, entry: Entry, now: datetime) -> tuple[str, int] | None:
        """Write the entry's image when the rule keeps it: (relative path, bytes)."""
        if entry.image is None or not self.retention.keeps(entry.verdict, entry.image_sha256):
            return None
        data = entry.image() if callable(entry.image) else entry.image
        if len(data) > self.retention.budget_bytes:
            return None  # one image larger than the whole budget: the record stays, not it
        suffix = entry.suffix if entry.suffix.isalnum() or entry.suffix[1:].isalnum() else ".bin"
        relative = (
            f"{entry.product}/{now:%Y-%m-%d}/"
            f"{entry.image_sha256[:16]}-{secrets.token_hex(4)}{suffix.lower()}"
        )
        path = self.catalogue.images / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: tmp.write_bytes(data))
        return relative, len(data)

    def usage(self) -> int:
        """Bytes of the images kept now."""
        with self.catalogue.engine.connect() as conn:
            return int(conn.execute(select(image_usage.c.bytes)).scalar_one())

    def prune(self) -> int:
        """Delete the oldest kept images (good ones first; never those pinned by feedback)
        until the budget holds; returns the bytes freed. Rows go in one transaction, files
        after it commits."""
        freed = 0
        while True:
            with self.catalogue.engine.begin() as conn:
                usage = conn.execute(
                    select(image_usage.c.bytes).where(image_usage.c.id == 1).with_for_update()
                ).scalar_one()
                excess = int(usage) - self.retention.budget_bytes
                if excess <= 0:
                    return freed
                candidates = conn.execute(
                    select(kept_images.c.record_id, kept_images.c.path, kept_images.c.bytes)
                    .where(kept_images.c.pinned.is_(False))  # feedback images stay
                    .order_by(kept_images.c.anomalous, kept_images.c.record_id)
                    .limit(PRUNE_BATCH)
                ).all()
                chosen, total = [], 0
                for row in candidates:
                    if total >= excess:
                        break
                    chosen.append(row)
                    total += int(row.bytes)
                if not chosen:  # only images pinned by feedback are left: they stay
                    return freed
                conn.execute(
                    sql_delete(kept_images).where(
                        kept_images.c.record_id.in_([r.record_id for r in chosen])
                    )
                )
                add_usage(conn, -total)
            for row in chosen:
                with contextlib.suppress(OSError):
                    (self.catalogue.images / row.path).unlink()
            freed += total

    # ------------------------------------------------------------------ reading

    def query(self, q: Query) -> list[dict[str, Any]]:
        """The records matching `q`, newest first, each with its kept image's path (or None)."""
        with self.catalogue.engine.connect() as conn:
            rows = conn.execute(self._select(q)).all()
        out = []
        for row in rows:
            item = dict(row._mapping)
            item["at"] = item["at"].replace(tzinfo=UTC) if item["at"].tzinfo is None else item["at"]
            item["n_regions"] = len(item["regions"] or [])
            out.append({k: item.get(k) for k in COLUMNS})
        return out

    def image_path(self, record_id: int) -> Path | None:
        """The kept image of a record (None when it was not kept or was pruned)."""
        with self.catalogue.engine.connect() as conn:
            found = conn.execute(
                select(kept_images.c.path).where(kept_images.c.record_id == record_id)
            ).scalar()
        return None if found is None else self.catalogue.images / found

    def _select(self, q: Query) -> Select:
        newest = (  # the newest operator label of each record (feedback.py)
            select(feedback.c.record_id, func.max(feedback.c.id).label("id"))
            .group_by(feedback.c.record_id)
            .subquery()
        )
        label = select(feedback.c.label).where(feedback.c.id == newest.c.id).scalar_subquery()
        query = (
            select(*records.c, kept_images.c.path.label("image"), label.label("feedback"))
            .outerjoin(kept_images, kept_images.c.record_id == records.c.id)
            .outerjoin(newest, newest.c.record_id == records.c.id)
            .order_by(records.c.id.desc())
        )
        if q.product is not None:
            query = query.where(records.c.product == q.product)
        if q.version is not None:
            query = query.where(records.c.version == q.version)
        if q.verdict is not None:
            query = query.where(records.c.verdict == q.verdict)
        if q.since is not None:
            query = query.where(records.c.at >= q.since)
        if q.until is not None:
            query = query.where(records.c.at < q.until)
        if q.limit is not None:
            query = query.limit(q.limit)
        return query.offset(q.offset)

    def export(self, path: str | Path, q: Query) -> int:
        """The records matching `q` as CSV or Parquet (by the file's suffix), written whole;
        returns how many."""
        path = Path(path)
        rows = self.query(q)
        if path.suffix.lower() == ".parquet":
            write_atomic(path, lambda tmp: write_parquet(tmp, rows))
        elif path.suffix.lower() == ".csv":
            text = csv_text(rows)
            write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        else:
            raise PadimError(f"export to .csv or .parquet, not {path.suffix or 'no suffix'}")
        return len(rows)


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """A record with JSON-ready values (times as ISO text, regions as JSON text)."""
    import json

    out = dict(row)
    out["at"] = row["at"].isoformat()
    out["regions"] = json.dumps(row["regions"], separators=(",", ":"))
    return out


def csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat(r) for r in rows)
    return buffer.getvalue()


def write_parquet(path: Path | BinaryIO, rows: list[dict[str, Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise PadimError("Parquet needs pyarrow: pip install 'padim[parquet]'") from None
    columns = {name: [flat(r)[name] for r in rows] for name in COLUMNS}
    pq.write_table(pa.table(columns), path)
