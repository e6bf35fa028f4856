"""Opening a catalogue: the schema built by the migrations equals the tables the code uses,
a second open is a no-op, a newer schema is refused, bad locations are one-line errors."""

from __future__ import annotations

from pathlib import Path

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
    assert schema_revision(catalogue.engine) == migrate(catalogue.engine) == "0003"


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


def test_an_older_catalogue_is_upgraded_with_its_data(location):
    """A catalogue at revision 0001 (issue 30's) with a record and a kept image: opening it
    with this padim migrates it, and nothing is lost."""
    from datetime import UTC, datetime

    from sqlalchemy import insert, select

    from padim.lifecycle.database import alembic_config, connect, upgrade
    from padim.lifecycle.schema import kept_images, records

    url = location[0]
    if "://" not in url:
        Path(url).mkdir(parents=True)
        url = f"sqlite:///{Path(url) / 'catalogue.db'}"
    engine = connect(url)
    with engine.begin() as conn:
        upgrade(conn, alembic_config(), "0001")
    row = {"at": datetime.now(UTC), "product": "p", "model_id": "m", "source": "s", "name": "n"}
    row |= {"score": 1.0, "normalised_score": 0.5, "threshold": 2.0, "verdict": "anomalous"}
    with engine.begin() as conn:
        conn.execute(insert(records).values(**row, regions=[], image_sha256="ab" * 32))
        conn.execute(  # the 0001 table: no pinned column yet
            text("INSERT INTO kept_images (record_id, path, bytes, anomalous) "
                 "VALUES (1, 'x.png', 3, TRUE)")
        )  # fmt: skip
    assert schema_revision(engine) == "0001"
    catalogue = open_catalogue(*location)
    assert schema_revision(catalogue.engine) == "0003"
    with catalogue.engine.connect() as conn:
        kept = conn.execute(select(kept_images)).one()
        assert conn.execute(select(records.c.name)).scalar_one() == "n"
    assert kept.path == "x.png" and kept.pinned is False
