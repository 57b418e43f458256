from __future__ import annotations

import functools
import io
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from streamlit.components.v2.component_manager import BidiComponentManager
from streamlit.testing.v1 import AppTest

from core.cli import main as cli_main
from core.serving.service import ProgramService
from core.store.db import make_engine, migrate
from testkit.counting import CountingGenerator
from testkit.pg_server import FreshDatabases, PostgresServer
from testkit.pgbouncer import PgBouncer
from tests.fake_openai import FakeOpenAI
from tests.helpers import NEUTRAL_CWD, PROFILE, ROOT, app_environment

TEMPLATE = "coach_template"
# What a run may leave in the checkout: the virtualenv, screenshots and the tools' caches.
MAY_LEAVE = (".venv/", "test-artifacts/", ".ruff_cache/", ".hypothesis/", ".mypy_cache/", ".pytest_cache/")


def _loose_files() -> set[str]:
    status = subprocess.run(
        # Directories neither tracked nor holding tracked files show as one entry ("data/").
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    paths = {line[3:].strip('"') for line in status.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not p.startswith(MAY_LEAVE) and "__pycache__/" not in p}


def pytest_sessionstart(session: pytest.Session) -> None:
    # No test sees the developer's configuration: their environment variables are dropped
    # and the working directory (where Settings reads a `.env`) is not the checkout.
    kept = {k: v for k, v in app_environment("").items() if k != "DATABASE_URL"}
    os.environ.clear()
    os.environ.update(kept)
    if not _is_worker(session.config):
        session.config.stash[_BEFORE] = _loose_files()


def pytest_collection_finish(session: pytest.Session) -> None:
    # Only once the tests are collected: an xdist worker collects after this session starts,
    # and from elsewhere it would look for the test paths there.
    os.chdir(NEUTRAL_CWD)


def _is_worker(config: pytest.Config) -> bool:
    # Under xdist only the controller sees the whole run: a worker that finishes first would
    # blame the files of tests other workers are still running.
    return hasattr(config, "workerinput")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    # pytest-randomly's own header is hidden by -q; the seed must be seen to replay an order.
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None:
        terminalreporter.write_line(
            f"random test order, seed {seed}: replay it with ./scripts/test --randomly-seed={seed}"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite never touches the user's files: anything it left in the checkout fails the run."""
    if _is_worker(session.config):
        return
    left = sorted(_loose_files() - session.config.stash.get(_BEFORE, set()))
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"the test run left files in the checkout: {', '.join(left[:10])}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[set[str]]()


class _ProductProcesses:
    """Python processes (`python -m core`, the dashboard) a test starts, seen through the
    interpreter's audit events: a test that starts one is a real-process test, and must be
    marked `process` (or `browser`) for the fast loop to leave it out."""

    def __init__(self) -> None:
        self.watching = False
        self.started: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self.watching and event == "subprocess.Popen" and isinstance(args[1], list | tuple):
            command = [str(part) for part in args[1]]
            if sys.executable in command:
                self.started.append(" ".join(command[command.index(sys.executable) :][:4]))


_PRODUCT_PROCESSES = _ProductProcesses()
sys.addaudithook(_PRODUCT_PROCESSES)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _PRODUCT_PROCESSES.started.clear()
    _PRODUCT_PROCESSES.watching = True
    try:
        return (yield)
    finally:
        _PRODUCT_PROCESSES.watching = False
        marked = {mark.name for mark in item.iter_markers()} & {"process", "browser"}
        if _PRODUCT_PROCESSES.started and not marked:
            pytest.fail(f"started {_PRODUCT_PROCESSES.started[0]}: mark the test `process`", pytrace=False)


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


@pytest.fixture(scope="session")
def pg_databases(pg: PostgresServer) -> FreshDatabases:
    return FreshDatabases(pg, TEMPLATE)


@pytest.fixture
def pg_url(pg: PostgresServer, pg_databases: FreshDatabases) -> Iterator[str]:
    """A migrated database with no rows per test, as a copy of the template is."""
    name = pg_databases.take()
    yield pg.url(name)
    pg_databases.give_back(name)


@pytest.fixture(scope="session")
def pgbouncer(pg: PostgresServer) -> Iterator[PgBouncer]:
    pooler = PgBouncer(pg).start()
    yield pooler
    pooler.stop()


@pytest.fixture
def pooled_url(pg_url: str, pgbouncer: PgBouncer, pg_databases: FreshDatabases) -> str:
    """The test's database through PgBouncer in transaction mode. Dropped after the test,
    never emptied for the next: the pooler keeps connections to it open."""
    name = make_url(pg_url).database or ""
    pg_databases.spoil(name)
    return pgbouncer.url(name)


@dataclass(frozen=True)
class Shared:
    """A database several processes share: the URL they query through, and the one that
    migrates (a direct one behind a pooler)."""

    url: str
    migrations_url: str | None = None

    def env(self) -> dict[str, str]:
        return {"MIGRATIONS_DATABASE_URL": self.migrations_url} if self.migrations_url else {}


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, copied for each test as PostgreSQL's template is: a copy
    takes a millisecond, Alembic's migrations of a new file about 0.2 s."""
    path = tmp_path_factory.mktemp("template") / "coach.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


def migrated_sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated SQLite database in the test's directory, from the template."""
    shutil.copyfile(request.getfixturevalue("sqlite_template"), tmp_path / "coach.db")
    return f"sqlite:///{tmp_path}/coach.db"


@pytest.fixture(params=["sqlite", "postgresql", "pgbouncer"])
def shared_database(request: pytest.FixtureRequest, tmp_path: Path) -> Shared:
    if request.param == "sqlite":
        return Shared(migrated_sqlite(request, tmp_path))
    direct: str = request.getfixturevalue("pg_url")
    if request.param == "postgresql":
        return Shared(direct)
    return Shared(request.getfixturevalue("pooled_url"), migrations_url=direct)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return migrated_sqlite(request, tmp_path)
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


APP = str(ROOT / "app.py")


@functools.cache
def _components() -> BidiComponentManager:
    manager = BidiComponentManager()
    manager.discover_and_register_components(start_file_watching=False)
    return manager


@pytest.fixture
def app_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AppTest]]:
    """The dashboard's real scripts through AppTest, on `database_url` with the offline
    generator unless `env` says otherwise; each test gets its own settings and engine."""

    def make(database_url: str, **env: str) -> AppTest:
        monkeypatch.setenv("DATABASE_URL", database_url)
        # AppTest clicks faster than any hand: only a test of double clicks wants the window.
        monkeypatch.setenv("DOUBLE_CLICK_SECONDS", "0")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        st.cache_resource.clear()
        app = AppTest.from_file(APP, default_timeout=60)
        # Each AppTest otherwise scans every installed distribution's metadata for Streamlit
        # components on its first run (0.2 s of CPU, a fifth of a page test); the dashboard
        # has none, and what the scan finds cannot change during a run.
        app._bidi_component_manager = _components()
        return app

    yield make
    st.cache_resource.clear()  # releases (disposes) the app's engine


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, self.stderr
        return json.loads(self.stdout)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliRun]:
    """`python -m core ARGS` on `database_url` in this process (`core.cli.main`), for tests
    where the process boundary is not the point: its exit code, stdout and stderr."""

    def run(database_url: str, *args: str, stdin: bytes | None = None, **env: str) -> CliRun:
        core_logger = logging.getLogger("core")
        kept = (core_logger.handlers[:], core_logger.level, core_logger.propagate)
        capsys.readouterr()
        try:
            with monkeypatch.context() as patch:
                patch.setenv("DATABASE_URL", database_url)
                for name, value in env.items():
                    patch.setenv(name, value)
                patch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin or b"")))
                try:
                    code = cli_main(list(args))
                except SystemExit as exit:  # argparse: --help, or arguments it refuses
                    code = int(exit.code or 0)
        finally:
            # main() points the `core` loggers at stderr; the next test's caplog needs them back.
            core_logger.handlers[:], core_logger.level, core_logger.propagate = kept[0], kept[1], kept[2]
        out, err = capsys.readouterr()
        return CliRun(code, out, err)

    return run


Run = Callable[..., subprocess.CompletedProcess[bytes]]


@pytest.fixture
def run(cli: Callable[..., CliRun]) -> Run:
    """`python -m core ARGS` in this process, seen as a finished process would be."""

    def in_process(database_url: str, *args: str, **options: Any) -> subprocess.CompletedProcess[bytes]:
        done = cli(database_url, *args, **options)
        return subprocess.CompletedProcess(args, done.code, done.stdout.encode(), done.stderr.encode())

    return in_process


@pytest.fixture
def app_engine(tmp_path: Path) -> Iterator[Engine]:
    """The database of an app made on `sqlite:///{tmp_path}/coach.db`, as a test reads it."""
    engine = make_engine(f"sqlite:///{tmp_path}/coach.db")
    yield engine
    engine.dispose()


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    """PROFILE as the file `python -m core generate --profile` reads."""
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILE))
    return path


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
