"""Engines for SQLite and PostgreSQL, and the migrations that shape them."""

from __future__ import annotations

import select
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError

from core.contract.cache_key import check_user_id
from core.store import waits
from core.store.adoption import SchemaRefused, uuid_user_ids
from core.store.schema import VERSION_TABLE

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Arbitrary constant naming "coach-cache migrations" among PostgreSQL advisory locks.
MIGRATION_LOCK_ID = 4_904_901
WRITES = "coach_cache_writes"
ONE_READ = "coach_cache_one_read"
T = TypeVar("T")
CONNECT_TIMEOUT_SECONDS = 5


def make_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(database_url)
    engine = create_engine(
        database_url,
        pool_size=10,
        max_overflow=10,
        # A transaction-mode pooler (PgBouncer, Supavisor) hands each transaction any server
        # connection: statements psycopg prepares on one (after 5 runs) are missing or
        # already taken on the next. A host that does not answer fails in seconds, not minutes.
        connect_args={"prepare_threshold": None, "connect_timeout": CONNECT_TIMEOUT_SECONDS},
        # A cache hit is one statement in autocommit: there is no transaction to roll back
        # when its connection goes back to the pool, and the no-op rollback cost more
        # client time than anything else around the statement.
        skip_autocommit_rollback=True,
    )
    event.listen(engine, "checkout", _discard_if_closed_by_server)
    waits.bound_postgres(engine)
    return engine


def _discard_if_closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A restarted PostgreSQL closes its connections, and an idle connection with something
    to read has been closed (or told it is about to be). Checking costs one syscall; the
    pool then opens a fresh connection, so the request after a restart succeeds. This is
    pool_pre_ping without its round trip on every checkout."""
    if dbapi_connection.closed or select.select([dbapi_connection.fileno()], [], [], 0)[0]:
        raise DisconnectionError("connection closed by the server")


def _sqlite_engine(database_url: str) -> Engine:
    # The busy timeout is set before each statement (core.waits), to what is left of its time.
    engine = create_engine(database_url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "do_connect")
    def _make_directory(*_args: Any) -> None:
        # On the first connection, not before: `migrate --check` creates nothing.
        if (missing := missing_sqlite_file(engine)) is not None:
            missing.parent.mkdir(parents=True, exist_ok=True)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets readers run during a write (cache hits during cleanup); the driver's own
        # transaction handling is replaced by explicit BEGIN so reads and writes share one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # A transaction that will write takes the write lock up front: a read transaction
        # upgraded later fails at once (SQLITE_BUSY) if another connection wrote meanwhile.
        # One read needs none: SQLite runs a lone statement in a transaction of its own.
        options = conn.get_execution_options()
        if not options.get(ONE_READ):
            conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(WRITES) else "BEGIN")

    waits.bound_sqlite(engine)
    return engine


def missing_sqlite_file(engine: Engine) -> Path | None:
    """The SQLite file this engine would create on connecting, when there is none yet."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    path = Path(database)
    return None if path.exists() else path


def connect_for_one_read(engine: Engine) -> Connection:
    """A connection for one statement that only reads, which needs no transaction around
    it: PostgreSQL runs it in autocommit, one round trip; SQLite in a transaction of its own
    (in WAL mode a reader never waits for a writer)."""
    if engine.dialect.name == "postgresql":
        return connect_for_one_statement(engine)
    return engine.connect().execution_options(**{ONE_READ: True})


def connect_for_one_statement(engine: Engine) -> Connection:
    """PostgreSQL only: a connection in autocommit, for one statement that is atomic by itself."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


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


def migrate(engine: Engine, target: str = "head") -> str:
    """Bring the schema to the newest revision; safe to call on every start, from many
    instances at once: PostgreSQL serialises them on an advisory lock, SQLite on its write
    lock, taken up front (BEGIN IMMEDIATE) so a second instance waits instead of failing
    with "database is locked" when it upgrades its read to a write. Raises SchemaRefused
    (nothing changed) when existing tables cannot be adopted."""
    with _migrating(engine) as connection, connection.begin():
        return _upgrade(connection, target)


def _migrating(engine: Engine) -> Connection:
    return connect_to_write(engine).execution_options(**{waits.LIMIT: waits.MIGRATION_SECONDS})


def pending_ddl(engine: Engine) -> list[str]:
    """The statements `migrate` would run now, found by running them in a transaction that
    is rolled back (DDL is transactional on both databases): nothing is changed. A SQLite
    file that does not exist yet is not created: a fresh database in memory stands for it."""
    if missing_sqlite_file(engine) is not None:
        fresh = make_engine("sqlite://")
        try:
            return pending_ddl(fresh)
        finally:
            fresh.dispose()
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(("SELECT", "PRAGMA", "SHOW", "WITH")):
            statements.append(" ".join(statement.split()))

    with _migrating(engine) as connection:
        transaction = connection.begin()
        event.listen(connection, "before_cursor_execute", record)
        try:
            _upgrade(connection)
        finally:
            event.remove(connection, "before_cursor_execute", record)
            transaction.rollback()
    return statements


def _upgrade(connection: Connection, target: str = "head") -> str:
    if is_postgres(connection.engine):
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_ID})
    _rename_legacy_version_table(connection)
    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, target)
    return current_revision(connection)


def _rename_legacy_version_table(connection: Connection) -> None:
    """Databases migrated before Coach Cache had its own version table recorded their state
    in `alembic_version`; it moves when it holds one of Coach Cache's revisions."""
    inspector = inspect(connection)
    if inspector.has_table(VERSION_TABLE) or not inspector.has_table("alembic_version"):
        return
    ours = {script.revision for script in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}
    versions = set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
    if versions and versions <= ours and inspector.has_table("generation_events"):
        connection.execute(text(f"ALTER TABLE alembic_version RENAME TO {VERSION_TABLE}"))


def current_revision(connection: Any) -> str:
    return (
        MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision() or "none"
    )


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head() or "none"


class Database:
    """The engine a process queries through (perhaps a transaction-mode pooler), and its
    schema, brought up to date the first time the database answers: a process may start
    while the database is down and begin saving as soon as it is back. Migrations run
    through `migrations_url` when given (a direct connection: a pooler in transaction mode
    cannot hold the migration's lock and DDL), else through `engine`."""

    def __init__(self, engine: Engine, migrations_url: str | None = None) -> None:
        self.engine = engine
        self.migrations_url = migrations_url
        self._revision: str | None = None
        self._uuid_user_ids = False
        self._lock = threading.Lock()

    def ensure_schema(self) -> str:
        """The schema's revision, migrating first if it is behind; raises DBAPIError while
        the database cannot be reached. The revision is read first, a plain read: a schema
        already at head is never migrated, so a start waits for no write lock (another
        process's write transaction, a migration's advisory lock)."""
        if self._revision is None:
            with self._lock:
                if self._revision is None:
                    revision = self._read(current_revision)
                    if revision != head_revision():
                        revision = self._migrate()
                    self._uuid_user_ids = self._read(uuid_user_ids)
                    self._revision = revision
        return self._revision

    def _read(self, query: Callable[[Connection], T]) -> T:
        with self.engine.connect() as connection:
            return query(connection)

    def check_user_id(self, user_id: Any) -> str:
        """A user id as this database stores it (see cache_key.check_user_id); the uuid rule
        applies once the schema has been read."""
        return check_user_id(user_id, uuid_only=self._uuid_user_ids)

    def pending_ddl(self) -> list[str]:
        return self._with_migrations_engine(pending_ddl)

    def missing_file(self) -> Path | None:
        """The SQLite file migrations would create, when there is none yet."""
        return self._with_migrations_engine(missing_sqlite_file)

    def unavailable(self) -> str | None:
        """None when the schema is ready, else why the database cannot be used (one line)."""
        try:
            self.ensure_schema()
        except DBAPIError as exc:
            return describe_db_error(exc)
        except SchemaRefused as exc:
            return str(exc)
        return None

    def _migrate(self) -> str:
        return self._with_migrations_engine(migrate)

    def _with_migrations_engine(self, run: Callable[[Engine], T]) -> T:
        if self.migrations_url is None:
            return run(self.engine)
        direct = make_engine(self.migrations_url)
        try:
            return run(direct)
        finally:
            direct.dispose()

    def dispose(self) -> None:
        self.engine.dispose()
