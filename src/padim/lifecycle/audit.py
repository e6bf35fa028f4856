"""The audit trail: one event per change to the registry, the tokens or (issue 31) feedback,
written in the change's own transaction: who, when, what."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from padim.lifecycle.schema import events


def audit(
    conn: Connection, actor: str, action: str, product: str | None, detail: dict[str, Any]
) -> None:
    """Write one event inside the caller's transaction (it commits with the change)."""
    conn.execute(
        insert(events).values(
            at=datetime.now(UTC), actor=actor, action=action, product=product, detail=detail
        )
    )


def read_events(
    engine: Engine, product: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """The events, oldest first (the last `limit` when given), of one product or all."""
    query = select(events).order_by(events.c.id.desc())
    if product is not None:
        query = query.where(events.c.product == product)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        rows = [dict(row._mapping) for row in conn.execute(query)]
    return rows[::-1]


def local_user() -> str:
    """Who runs a command on this computer (the actor of CLI changes)."""
    try:
        return f"{getpass.getuser()} (cli)"
    except (OSError, KeyError):
        return "unknown (cli)"
