"""API tokens with roles. A token is shown once, when it is made; the catalogue keeps only
its SHA-256 (tokens are 256 random bits, so a fast hash is as safe as a slow one and costs
nothing per request). Roles are ordered: an engineer may do what an operator may, an admin
what an engineer may."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from padim.errors import NotFound, PadimError
from padim.lifecycle.audit import audit
from padim.lifecycle.database import Catalogue
from padim.lifecycle.registry import checked_name
from padim.lifecycle.schema import tokens
from padim.options import ROLES

PREFIX = "padim_"  # tokens are recognisable in logs and secret scanners


@dataclass(frozen=True)
class Identity:
    """Who a request is: a token's name and role."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Creating, checking, listing and revoking the API tokens of `catalogue`."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def create(self, name: str, role: str, actor: str) -> str:
        """A new token for `name` with `role`; the token itself is returned, never stored."""
        checked_name("token", name)
        if role not in ROLES:
            raise PadimError(f"role {role!r}: choose one of {', '.join(ROLES)}")
        token = PREFIX + secrets.token_urlsafe(32)
        try:
            with self.catalogue.engine.begin() as conn:
                conn.execute(
                    insert(tokens).values(
                        name=name,
                        role=role,
                        hash=token_hash(token),
                        created_by=actor,
                        created_at=datetime.now(UTC),
                        revoked=False,
                    )
                )
                audit(conn, actor, "token-create", None, {"name": name, "role": role})
        except IntegrityError:
            raise PadimError(
                f"a token named {name!r} exists: revoke it or choose another name"
            ) from None
        return token

    def identify(self, token: str) -> Identity | None:
        """The holder of `token`, or None for an unknown or revoked one."""
        if not token.startswith(PREFIX):
            return None
        with self.catalogue.engine.connect() as conn:
            row = conn.execute(
                select(tokens.c.name, tokens.c.role).where(
                    tokens.c.hash == token_hash(token), tokens.c.revoked.is_(False)
                )
            ).first()
        return None if row is None else Identity(row.name, row.role)

    def revoke(self, name: str, actor: str) -> None:
        with self.catalogue.engine.begin() as conn:
            done = conn.execute(
                update(tokens)
                .where(tokens.c.name == name, tokens.c.revoked.is_(False))
                .values(revoked=True)
            )
            if done.rowcount == 0:
                raise NotFound(f"no active token named {name!r}")
            audit(conn, actor, "token-revoke", None, {"name": name})

    def listing(self) -> list[dict[str, Any]]:
        """Every token's name, role, maker, date and state (never the hash)."""
        columns = (
            tokens.c.name,
            tokens.c.role,
            tokens.c.created_by,
            tokens.c.created_at,
            tokens.c.revoked,
        )
        with self.catalogue.engine.connect() as conn:
            rows = conn.execute(select(*columns).order_by(tokens.c.id)).all()
        return [{**row._mapping, "created_at": row.created_at.isoformat()} for row in rows]
