"""Opening a catalogue: the database (a SQLite file by default, PostgreSQL by URL) and the
folder beside it for files (model versions, kept images), with the schema migrated to the
newest revision this padim knows (Alembic) before anything reads or writes it.

SQLite runs in WAL mode (readers never block the writer, a killed writer loses no committed
transaction) with a busy timeout, so several service workers and watch processes write at
once; PostgreSQL gives each change its own transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError

from padim.errors import PadimError

DATABASE_FILE = "catalogue.db"  # in a catalogue folder
MIGRATION_LOCK = 0x7061646D  # PostgreSQL advisory lock held while migrating
MIGRATION_RETRIES = 5  # processes starting together: the losers retry against the new schema
BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class Catalogue:
    """An open catalogue: its database `url`, `engine`, and the `files` folder."""

    url: str
    engine: Engine
    files: Path

    @property
    def models(self) -> Path:
        return self.files / "models"

    @property
    def images(self) -> Path:
        return self.files / "images"

    @property
    def kind(self) -> str:
        return self.engine.dialect.name


def open_catalogue(location: str | Path, files: str | Path | None = None) -> Catalogue:
    """The catalogue at `location`: a folder (a SQLite database and the files inside it,
    created if need be) or a database URL (`postgresql+psycopg://user@host/db`,
    `sqlite:///path.db`) with `files` a folder every process reaches."""
    text_location = str(location)
    if "://" not in text_location:
        folder = Path(location)
        if folder.exists() and not folder.is_dir():
            raise PadimError(f"catalogue {folder} is not a folder (give a folder or a URL)")
        folder.mkdir(parents=True, exist_ok=True)
        url, root = f"sqlite:///{folder.resolve() / DATABASE_FILE}", Path(files or folder)
    else:
        url = text_location
        if files is None and url.startswith("sqlite:///"):
            files = Path(url.removeprefix("sqlite:///")).parent
        if files is None:
            raise PadimError(
                "a database URL needs --files DIR: the folder (shared by every line computer) "
                "for the model versions and kept images"
            )
        root = Path(files)
    engine = connect(url)
    migrate(engine)
    return Catalogue(url, engine, root)


def connect(url: str) -> Engine:
    """An engine for `url`, with SQLite set up for several writing processes."""
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except (ImportError, ModuleNotFoundError) as exc:
        raise PadimError(
            f"cannot use {url.split('://')[0]}: {exc} (pip install 'padim[lifecycle]')"
        ) from None
    except Exception as exc:  # a malformed URL
        raise PadimError(f"not a database URL: {url!r} ({exc})") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
    return engine


def _begin_immediate(conn: Any) -> None:
    """SQLite transactions take the write lock when they begin (waiting up to the busy
    timeout): a deferred one that reads, then writes, fails at once with 'database is locked'
    when another process wrote in between."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # the driver's own BEGIN off: ours instead
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk, not only in the page cache
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(engine: Engine) -> str:
    """Bring the schema to the newest revision (a no-op when it is there); returns it. A
    database written by a newer padim is refused in one line, never changed."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = alembic_config()
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    for attempt in range(MIGRATION_RETRIES):
        try:
            with engine.begin() as conn:
                current = MigrationContext.configure(conn).get_current_revision()
                if current == head:
                    return head
                known = {s.revision for s in ScriptDirectory.from_config(config).walk_revisions()}
                if current is not None and current not in known:
                    raise PadimError(
                        f"the catalogue's schema ({current}) is newer than this padim knows "
                        f"({head}): upgrade padim"
                    )
                if engine.dialect.name == "postgresql":
                    conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
                upgrade(conn, config)
            return head
        except DBAPIError as exc:  # another process migrated at the same moment
            if attempt == MIGRATION_RETRIES - 1:
                raise PadimError(
                    f"cannot set up the catalogue: {str(exc).splitlines()[0]}"
                ) from None
            time.sleep(0.2 * (attempt + 1))
    return head


def upgrade(conn: Any, config: Any, target: str = "head") -> None:
    from alembic import command

    config.attributes["connection"] = conn
    command.upgrade(config, target)


def alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("padim.lifecycle") / "migrations")
    )
    return config


def schema_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None: empty)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
