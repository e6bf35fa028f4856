"""A model's life on the line: a catalogue (SQLite by default, PostgreSQL by URL) holding a
registry of numbered model versions per product with aliases, promotion and rollback; the
inspection records of every verdict with a retention rule for their images; API tokens with
roles; and the audit trail of every change. Torch-free: the service and watch use it.
Needs padim[lifecycle] (SQLAlchemy, Alembic, psycopg)."""

from padim.lifecycle.database import Catalogue, open_catalogue
from padim.lifecycle.records import Entry, Query, RecordBook, Retention
from padim.lifecycle.registry import Registry, Version
from padim.lifecycle.tokens import TokenStore

__all__ = [
    "Catalogue",
    "Entry",
    "Query",
    "RecordBook",
    "Registry",
    "Retention",
    "TokenStore",
    "Version",
    "open_catalogue",
]
