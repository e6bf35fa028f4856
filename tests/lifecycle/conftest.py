"""The catalogue every lifecycle test runs on: a SQLite folder, and a real PostgreSQL when
PADIM_TEST_POSTGRES names one (`.ci/run` starts one; PADIM_REQUIRE_POSTGRES makes it
mandatory)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from sqlalchemy import MetaData, text

from padim.lifecycle.database import Catalogue, connect, open_catalogue

POSTGRES = os.environ.get("PADIM_TEST_POSTGRES")  # e.g. postgresql+psycopg://u@host:5432/db


def empty_postgres(url: str) -> str:
    """The test database emptied (every table dropped, the migrations' record too)."""
    engine = connect(url)
    meta = MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path) -> tuple[str, str]:
    """(catalogue location, files folder) of an empty catalogue."""
    if request.param == "sqlite":
        return str(tmp_path / "catalogue"), str(tmp_path / "catalogue")
    if not POSTGRES:
        if os.environ.get("PADIM_REQUIRE_POSTGRES"):
            pytest.fail("PADIM_REQUIRE_POSTGRES is set but PADIM_TEST_POSTGRES is not")
        pytest.skip("PADIM_TEST_POSTGRES not set")
    return empty_postgres(POSTGRES), str(tmp_path / "files")


@pytest.fixture
def catalogue(location) -> Catalogue:
    return open_catalogue(*location)
