"""Engines for SQLite and PostgreSQL, and the migrations that shape them."""

from __future__ import annotations

import select
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary constant naming "coach-cache migrations" among PostgreSQL advisory locks.
MIGRATION_LOCK_ID = 4_904_901
WRITES = "coach_cache_writes"


def make_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(database_url, url.database)
    engine = create_engine(database_url, pool_size=10, max_overflow=10)
    event.listen(engine, "checkout", _discard_if_closed_by_server)
    return engine


def _discard_if_closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A restarted PostgreSQL closes its connections, and an idle connection with something
    to read has been closed (or told it is about to be). Checking costs one syscall; the
    pool then opens a fresh connection, so the request after a restart succeeds. This is
    pool_pre_ping without its round trip on every checkout."""
    if dbapi_connection.closed or select.select([dbapi_connection.fileno()], [], [], 0)[0]:
        raise DisconnectionError("connection closed by the server")


def _sqlite_engine(database_url: str, database: str | None) -> Engine:
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(database_url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers run during a write (cache hits during cleanup); the driver's own
        # transaction handling is replaced by explicit BEGIN so reads and writes share one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # A transaction that will write takes the write lock up front: a read transaction
        # upgraded later fails at once (SQLITE_BUSY) if another connection wrote meanwhile.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITES) else "BEGIN")

    return engine


def connect_to_write(engine: Engine) -> Connection:
    """A connection whose transactions read and then write (SQLite: BEGIN IMMEDIATE)."""
    return engine.connect().execution_options(**{WRITES: True})


def describe_db_error(exc: DBAPIError) -> str:
    """The database's own first line (e.g. 'permission denied for table x'), without the
    statement or its parameters."""
    first_line = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
    return f"{type(exc.orig).__name__}: {first_line[:200]}"


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def migrate(engine: Engine) -> str:
    """Bring the schema to the newest revision; safe to call on every start, from many
    instances at once: PostgreSQL serialises them on an advisory lock, SQLite on its write
    lock, taken up front (BEGIN IMMEDIATE) so a second instance waits instead of failing
    with "database is locked" when it upgrades its read to a write."""
    config = _alembic_config()
    with connect_to_write(engine) as connection, connection.begin():
        if is_postgres(engine):
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_ID})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
        return current_revision(connection)


def current_revision(connection: Any) -> str:
    return MigrationContext.configure(connection).get_current_revision() or "none"


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head() or "none"
