"""`Registry`: numbered model versions per product, aliases, promotion, rollback.

Model files stay files: registering copies one into the catalogue's folder
(`<files>/models/<product>/<product>-v<number>.safetensors`, written atomically, never
changed after: its model id names product and version).
The database holds each version's lineage (parent version, the training images' digests and
count, the fit options, the evaluation it passed, its operating points, who registered it and
when, a note) and the aliases (`production`, `candidate`, ...) that point at versions. Every
change is one transaction with its audit event; version numbers come from a unique
constraint, so concurrent registrations from several processes get distinct numbers.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from padim.errors import NotFound, PadimError
from padim.files import file_sha256, write_atomic
from padim.lifecycle.audit import audit, read_events
from padim.lifecycle.database import Catalogue
from padim.lifecycle.schema import aliases, products, versions

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # products and aliases: file/URL-safe
REGISTER_RETRIES = 50  # concurrent registrations of one product retry on the unique number


@dataclass(frozen=True)
class Version:
    """One registered model version (a row of `versions`, with its product's name)."""

    product: str
    number: int
    path: Path
    sha256: str
    parent: int | None
    n_train: int | None
    images_sha256: str | None  # one digest of the training images' sorted digests
    config: dict[str, Any]
    evaluation: dict[str, Any] | None
    operating_points: dict[str, Any] | None
    created_by: str
    created_at: datetime
    note: str

    def to_dict(self) -> dict[str, Any]:
        """As the REST API and `padim registry versions --json` show it."""
        return {
            "product": self.product,
            "version": self.number,
            "file": self.path.name,
            "sha256": self.sha256,
            "parent": self.parent,
            "n_train": self.n_train,
            "images_sha256": self.images_sha256,
            "config": self.config,
            "evaluation": self.evaluation,
            "operating_points": self.operating_points,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "note": self.note,
        }


def checked_name(kind: str, name: str) -> str:
    if not NAME.match(name):
        raise PadimError(
            f"{kind} name {name!r}: use letters, digits, '.', '_' or '-' (at most 100), "
            "starting with a letter or digit"
        )
    return name


def digest_of_digests(digests: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


class Registry:
    """The model versions of every product in `catalogue` (see the module's docstring)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    # ------------------------------------------------------------------ versions

    def register(
        self,
        product: str,
        model_path: str | Path,
        actor: str,
        note: str = "",
        parent: int | None = None,
        evaluation: dict[str, Any] | None = None,
    ) -> Version:
        """Copy a fitted model file into the catalogue as the product's next version."""
        from padim.model.modelfile import read_model_config

        checked_name("product", product)
        source = Path(model_path)
        header = read_model_config(source)  # a clear error for anything but a model file
        if parent is not None:
            self.version(product, parent)  # the parent must exist
        lineage = self._lineage(source, header)
        for _ in range(REGISTER_RETRIES):
            try:
                return self._insert(product, source, lineage, actor, note, parent, evaluation)
            except IntegrityError:  # another process took the number (or the product)
                time.sleep(0.005)
        raise PadimError(f"could not register a version of {product}: too many writers at once")

    @staticmethod
    def _lineage(source: Path, header: dict[str, Any]) -> dict[str, Any]:
        info = header.get("info") or {}
        digests = info.get("image_digests")
        points = info.get("operating_points") or {}
        return {
            "sha256": file_sha256(source),
            "n_train": info.get("n_train"),
            "images_sha256": digest_of_digests(digests) if digests else None,
            "image_digests": digests,
            "config": header.get("config") or {},
            "operating_points": {
                "threshold": header.get("threshold"),
                **{n: p.get("threshold") for n, p in points.items() if isinstance(p, dict)},
            },
        }

    def _insert(
        self,
        product: str,
        source: Path,
        lineage: dict[str, Any],
        actor: str,
        note: str,
        parent: int | None,
        evaluation: dict[str, Any] | None,
    ) -> Version:
        with self.catalogue.engine.begin() as conn:
            product_id = self._product_id(conn, product, create=True)
            last = conn.execute(
                select(func.max(versions.c.number)).where(versions.c.product_id == product_id)
            ).scalar()
            number = (last or 0) + 1
            path = self.catalogue.models / product / f"{product}-v{number}.safetensors"
            conn.execute(
                insert(versions).values(
                    product_id=product_id,
                    number=number,
                    path=str(path),
                    parent=parent,
                    evaluation=evaluation,
                    created_by=actor,
                    created_at=_now(),
                    note=note,
                    **lineage,
                )
            )
            path.parent.mkdir(parents=True, exist_ok=True)  # the copy before the commit:
            write_atomic(path, lambda tmp: shutil.copyfile(source, tmp))  # no row without it
            audit(conn, actor, "register", product, {"version": number, "note": note})
        return self.version(product, number)

    def products(self) -> list[str]:
        with self.catalogue.engine.connect() as conn:
            return list(conn.execute(select(products.c.name).order_by(products.c.name)).scalars())

    def versions(self, product: str) -> list[Version]:
        with self.catalogue.engine.connect() as conn:
            rows = conn.execute(self._query(product).order_by(versions.c.number)).all()
        return [self._version(product, row) for row in rows]

    def version(self, product: str, ref: int | str) -> Version:
        """A version by number (`3`, `v3`) or by alias (`production`)."""
        number = _number(ref)
        query = self._query(product)
        if number is not None:
            query = query.where(versions.c.number == number)
        else:
            query = query.join(aliases, aliases.c.version_id == versions.c.id).where(
                aliases.c.name == str(ref)
            )
        with self.catalogue.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            what = f"version {number}" if number is not None else f"alias {ref!r}"
            raise NotFound(f"product {product!r} has no {what} in the registry")
        return self._version(product, row)

    def number_of(self, product: str, sha256: str) -> int | None:
        """The newest version of `product` whose file has this SHA-256 (None: not registered)."""
        with self.catalogue.engine.connect() as conn:
            found = conn.execute(
                select(func.max(versions.c.number))
                .join(products, products.c.id == versions.c.product_id)
                .where(products.c.name == product, versions.c.sha256 == sha256)
            ).scalar()
        return None if found is None else int(found)

    def image_digests(self, product: str, number: int) -> list[str]:
        """The SHA-256 of every image version `number` was trained on."""
        with self.catalogue.engine.connect() as conn:
            found = conn.execute(
                select(versions.c.image_digests)
                .join(products, products.c.id == versions.c.product_id)
                .where(products.c.name == product, versions.c.number == number)
            ).scalar()
        return list(found or [])

    # ------------------------------------------------------------------ aliases

    def aliases(self, product: str) -> dict[str, int]:
        with self.catalogue.engine.connect() as conn:
            rows = conn.execute(
                select(aliases.c.name, versions.c.number)
                .join(versions, aliases.c.version_id == versions.c.id)
                .join(products, products.c.id == aliases.c.product_id)
                .where(products.c.name == product)
                .order_by(aliases.c.name)
            ).all()
        return {name: number for name, number in rows}

    def promote(
        self,
        product: str,
        ref: int | str,
        actor: str,
        alias: str = "production",
        override: str | None = None,
    ) -> int:
        """Point `alias` at version `ref` (audited with the version it pointed at before);
        returns the version number. A version whose gate (its evaluation's `gate`, from
        retraining) failed for this alias needs an `override` reason, which is audited."""
        gate = (self.version(product, ref).evaluation or {}).get("gate")
        failed = isinstance(gate, dict) and gate.get("for") == alias and not gate.get("passed")
        reason = (override or "").strip()
        if failed and not reason:
            assert isinstance(gate, dict)
            why = "; ".join(c["check"] for c in gate.get("checks", []) if not c.get("passed"))
            raise PadimError(
                f"{product} version {ref} failed its gate for {alias} ({why}): promote it "
                "with an override reason if it must go there anyway"
            )
        extra = {"override": reason} if failed else {}
        return self._point(product, ref, actor, alias, "promote", extra)

    def rollback(self, product: str, actor: str, alias: str = "production") -> int:
        """Point `alias` back at the version it pointed at before its last promotion (a
        second rollback goes one further back); returns that version's number."""
        history = [
            (e["action"], e["detail"])
            for e in read_events(self.catalogue.engine, product)
            if e["action"] in ("promote", "rollback") and e["detail"].get("alias") == alias
        ]
        target = _rollback_target(history)
        if target is None:
            raise PadimError(f"{product}: {alias} has no earlier version to roll back to")
        return self._point(product, target, actor, alias, "rollback")

    def _point(
        self,
        product: str,
        ref: int | str,
        actor: str,
        alias: str,
        action: str,
        extra: dict[str, Any] | None = None,
    ) -> int:
        checked_name("alias", alias)
        target = self.version(product, ref)
        with self.catalogue.engine.begin() as conn:
            product_id = self._product_id(conn, product)
            version_id = conn.execute(
                select(versions.c.id).where(
                    versions.c.product_id == product_id, versions.c.number == target.number
                )
            ).scalar_one()
            where = (aliases.c.product_id == product_id) & (aliases.c.name == alias)
            before = conn.execute(
                select(versions.c.number)
                .join(aliases, aliases.c.version_id == versions.c.id)
                .where(where)
                .with_for_update()
            ).scalar()
            if before is None:
                conn.execute(
                    insert(aliases).values(product_id=product_id, name=alias, version_id=version_id)
                )
            else:
                conn.execute(update(aliases).where(where).values(version_id=version_id))
            detail = {"alias": alias, "version": target.number, "before": before}
            audit(conn, actor, action, product, detail | (extra or {}))
        return target.number

    # ------------------------------------------------------------------ helpers

    def _product_id(self, conn: Connection, product: str, create: bool = False) -> int:
        found = conn.execute(select(products.c.id).where(products.c.name == product)).scalar()
        if found is not None:
            return int(found)
        if not create:
            raise NotFound(f"no product {product!r} in the registry")
        result = conn.execute(insert(products).values(name=product, created_at=_now()))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])

    @staticmethod
    def _query(product: str) -> Any:
        columns = [c for c in versions.c if c.name != "image_digests"]  # can be long
        return (
            select(*columns)
            .join(products, products.c.id == versions.c.product_id)
            .where(products.c.name == product)
        )

    @staticmethod
    def _version(product: str, row: Any) -> Version:
        m = row._mapping
        return Version(
            product=product,
            number=m["number"],
            path=Path(m["path"]),
            sha256=m["sha256"],
            parent=m["parent"],
            n_train=m["n_train"],
            images_sha256=m["images_sha256"],
            config=m["config"],
            evaluation=m["evaluation"],
            operating_points=m["operating_points"],
            created_by=m["created_by"],
            created_at=m["created_at"],
            note=m["note"],
        )


def _rollback_target(history: list[tuple[str, dict[str, Any]]]) -> int | None:
    """Replay an alias's promotions and rollbacks: a promotion stacks the version it
    replaced, a rollback takes the top one back; the target is the top of the stack (so p1,
    p2, p3, rollback, rollback gives 2, then 1)."""
    stack: list[int] = []
    for action, detail in history:
        if action == "rollback":
            if stack:
                stack.pop()
        elif detail.get("before") is not None:
            stack.append(int(detail["before"]))
    return stack[-1] if stack else None


def _number(ref: int | str) -> int | None:
    text = str(ref)
    text = text[1:] if text[:1] in "vV" and text[1:].isdigit() else text
    return int(text) if text.isdigit() else None


def _now() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)
