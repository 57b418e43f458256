from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from core.db import make_engine, migrate
from core.service import ProgramService
from tests.fake_openai import FakeOpenAI
from tests.helpers import CountingGenerator
from tests.pg_server import PostgresServer

TEMPLATE = "coach_template"


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    server.wait_ready()
    server.admin(f"CREATE DATABASE {TEMPLATE}")
    engine = make_engine(server.url(TEMPLATE))
    migrate(engine)
    engine.dispose()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg: PostgresServer) -> Iterator[str]:
    """A fresh, migrated database per test, copied from the template in milliseconds."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg.admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield pg.url(name)
    pg.admin(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/coach.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def generator() -> CountingGenerator:
    return CountingGenerator()


@pytest.fixture
def service(engine: Engine, generator: CountingGenerator) -> ProgramService:
    return ProgramService(engine=engine, generator=generator, ttl=timedelta(hours=24), lock_wait_seconds=30)


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def fake_openai(fake_openai_server: FakeOpenAI) -> FakeOpenAI:
    fake_openai_server.reset()
    return fake_openai_server


class Faults:
    """Real faults in the real database: privileges revoked from the application's role
    on PostgreSQL, an authorizer denying the statement on SQLite."""

    def __init__(
        self, engine: Engine, url: str, admin: PostgresServer | None, role: str | None, database: str | None
    ) -> None:
        self.engine, self.url = engine, url
        self._pg, self._role, self._database = admin, role, database
        self._denied: set[tuple[str, str]] = set()
        if admin is None:
            event.listen(engine, "connect", self._authorize)

    def _authorize(self, dbapi_connection: Any, _record: Any) -> None:
        codes = {"SELECT": sqlite3.SQLITE_READ, "INSERT": sqlite3.SQLITE_INSERT, "UPDATE": sqlite3.SQLITE_UPDATE}

        def authorizer(action: int, table: str | None, *_: Any) -> int:
            for privilege, denied_table in self._denied:
                if action == codes[privilege] and table == denied_table:
                    return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK

        dbapi_connection.set_authorizer(authorizer)

    def deny(self, table: str, *privileges: str) -> None:
        self._denied |= {(p, table) for p in privileges}
        if self._pg is not None:
            self._pg.admin(f"REVOKE {', '.join(privileges)} ON {table} FROM {self._role}", self._database)
        self.engine.dispose()  # new connections see the change

    def allow(self, table: str, *privileges: str) -> None:
        self._denied -= {(p, table) for p in privileges}
        if self._pg is not None:
            self._pg.admin(f"GRANT {', '.join(privileges)} ON {table} TO {self._role}", self._database)
        self.engine.dispose()


def _faults(request: pytest.FixtureRequest, database_url: str) -> Iterator[Faults]:
    if database_url.startswith("sqlite"):
        engine = make_engine(database_url)
        migrate(engine)
        yield Faults(engine, database_url, None, None, None)
        engine.dispose()
        return
    pg: PostgresServer = request.getfixturevalue("pg")
    database = make_url(database_url).database
    role = f"app_{database}"
    pg.admin(f"CREATE ROLE {role} LOGIN")
    pg.admin(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; "
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        database,
    )
    url = pg.url(database, user=role)
    engine = make_engine(url)
    yield Faults(engine, url, pg, role, database)
    engine.dispose()
    pg.admin(f"DROP OWNED BY {role} CASCADE", database)
    pg.admin(f"DROP ROLE {role}")


@pytest.fixture
def faults(request: pytest.FixtureRequest, database_url: str) -> Iterator[Faults]:
    """An engine whose privileges a test can take away, on both databases."""
    yield from _faults(request, database_url)


@pytest.fixture
def pg_faults(request: pytest.FixtureRequest, pg_url: str) -> Iterator[Faults]:
    """The same on PostgreSQL only, for code that builds its own engine from `faults.url`."""
    yield from _faults(request, pg_url)
