"""Who may do what: with tokens required, every request names its holder with
`Authorization: Bearer <token>`; a missing or unknown token is 401, a role too low is 403.
Roles are ordered (operator < engineer < admin): operators score images and give feedback,
engineers also retrain, promote and roll back, admins also manage tokens. Reading endpoints
need an operator's token unless the service opens them (`--open-reads`)."""

from __future__ import annotations

from fastapi import Request

from padim.lifecycle.tokens import Identity
from padim.service.catalogue import Lifecycle
from padim.service.requests import ApiError

ANONYMOUS = Identity("anonymous", "admin")  # a service without tokens: anyone may do anything
READ = "read"  # the pseudo-role of GET endpoints


def lifecycle_of(request: Request) -> Lifecycle | None:
    return request.app.state.service.lifecycle


def require(request: Request, role: str) -> Identity:
    """The request's identity, if it may act as `role` (or READ); else 401 or 403."""
    life = lifecycle_of(request)
    if life is None or not life.auth or (role == READ and life.open_reads):
        return ANONYMOUS
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "unauthorised", "this service needs a token: send 'Authorization: Bearer TOKEN'"
        )
    identity = life.identify(token.strip())
    if identity is None:
        raise ApiError(401, "unauthorised", "unknown or revoked token")
    needed = "operator" if role == READ else role
    if not identity.may(needed):
        raise ApiError(
            403, "forbidden", f"{identity.name} is an {identity.role}: this needs {needed}"
        )
    return identity


def actor(identity: Identity) -> str:
    """How the audit trail names a change made over the API."""
    return f"{identity.name} (api)"
