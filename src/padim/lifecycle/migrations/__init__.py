"""Alembic migrations of the catalogue's schema (run by `padim.lifecycle.database.migrate`)."""
