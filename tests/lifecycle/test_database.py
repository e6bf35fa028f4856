"""Opening a catalogue: the schema built by the migrations equals the tables the code uses,
a second open is a no-op, a newer schema is refused, bad locations are one-line errors."""

from __future__ import annotations

import pytest

pytest.importorskip("sqlalchemy")
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from padim.errors import PadimError
from padim.lifecycle.database import migrate, open_catalogue, schema_revision
from padim.lifecycle.schema import metadata


def test_the_migrations_build_exactly_the_schema(catalogue):
    with catalogue.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], diff
    assert schema_revision(catalogue.engine) == migrate(catalogue.engine) == "0001"


def test_a_newer_schema_is_refused_untouched(catalogue):
    with catalogue.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(PadimError, match="newer than this padim"):
        migrate(catalogue.engine)
    assert schema_revision(catalogue.engine) == "9999"


def test_bad_locations(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PadimError, match="not a folder"):
        open_catalogue(tmp_path / "file")
    with pytest.raises(PadimError, match="--files"):
        open_catalogue("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(PadimError, match=r"not a database URL|cannot use"):
        open_catalogue("nosuchdb://x/y", tmp_path)
