"""A throwaway PostgreSQL cluster for the tests (and the benchmark), started from the local
binaries. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import psycopg


def find_bindir() -> Path:
    for candidate in [os.environ.get("PG_BINDIR"), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if candidate and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("PostgreSQL binaries not found: install Debian's postgresql package or set PG_BINDIR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """Ask a server process to end, and make it if it has not within 10 s."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="coach-cache-pg-"))
        self.datadir = self.root / "data"
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root)

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "start", "-w", "-D", str(self.datadir), "-l", str(self.root / "log"), "-o", options)
        return self

    def restart(self) -> None:
        self._run("pg_ctl", "restart", "-w", "-m", "fast", "-D", str(self.datadir), "-l", str(self.root / "log"))

    def stop(self) -> None:
        try:
            if self.datadir.exists():  # a server never started has nothing to stop
                self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self.datadir))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @contextmanager
    def stalled(self) -> Iterator[None]:
        """Every server process stopped (SIGSTOP), as a hung host or a network partition
        looks to a client: connections stay open and nothing answers. Resumed on exit."""
        postmaster = psutil.Process(int((self.datadir / "postmaster.pid").read_text().split()[0]))
        pids = [postmaster.pid, *(child.pid for child in postmaster.children())]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

    def url(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname={database}", autocommit=True)

    def admin(self, sql: str, database: str = "postgres") -> None:
        with self.connect(database) as c:
            c.execute(sql)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


# What makes two databases the same shape for a test: their tables, columns, indexes,
# constraints, triggers, functions and privileges, the schemas, the migrations applied, and
# the database's own settings and access.
_SHAPE = """
WITH mine AS (SELECT oid FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema')
SELECT md5(string_agg(part, E'\\n' ORDER BY part)) FROM (
    SELECT format('%s.%s %s %s %s %s', table_schema, table_name, column_name, data_type, is_nullable, column_default)
        AS part
        FROM information_schema.columns WHERE table_schema NOT IN ('pg_catalog', 'information_schema')
    UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
    UNION ALL SELECT format('%s %s %s', relname, relkind, relacl) FROM pg_class WHERE relnamespace IN (TABLE mine)
    UNION ALL SELECT conname || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace IN (TABLE mine)
    UNION ALL SELECT tgname FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL SELECT proname FROM pg_proc WHERE pronamespace IN (TABLE mine)
    UNION ALL SELECT format('%s %s', nspname, nspacl) FROM pg_namespace
    UNION ALL SELECT coalesce(setconfig::text, '') FROM pg_db_role_setting
    UNION ALL SELECT format('%s', datacl) FROM pg_database WHERE datname = current_database()
    UNION ALL SELECT 'migrated to ' || version_num FROM coach_cache_alembic_version
) AS shape
"""
_TABLES = """
SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND tablename <> 'coach_cache_alembic_version'
"""


class FreshDatabases:
    """A migrated database with no rows for each test, as a copy of `template` would be.
    PostgreSQL takes about a quarter of a second to copy one, so the last test's database is
    emptied instead (milliseconds) when its shape is still the template's; a test that
    changed it (migrated, adopted, granted, added a table) gets its database dropped, and the
    next one a new copy. Every connection to a database handed back is closed first, as a
    DROP ... WITH (FORCE) would."""

    def __init__(self, server: PostgresServer, template: str) -> None:
        self.server, self.template = server, template
        with self.server.connect(template) as connection:
            self.shape = connection.execute(_SHAPE).fetchone()
            self.tables = ", ".join(row[0] for row in connection.execute(_TABLES))
        self._kept: str | None = None
        self._spoilt: set[str] = set()

    def take(self) -> str:
        name, self._kept = self._kept, None
        if name is None:
            name = f"t_{uuid.uuid4().hex[:12]}"
            self.server.admin(f"CREATE DATABASE {name} TEMPLATE {self.template}")
        return name

    def spoil(self, name: str) -> None:
        """Never reuse `name` (a pooler holds connections to it that closing would break)."""
        self._spoilt.add(name)

    def give_back(self, name: str) -> None:
        try:
            if name not in self._spoilt:
                self.server.admin(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
                with self.server.connect(name) as connection:
                    if connection.execute(_SHAPE).fetchone() == self.shape:
                        connection.execute(f"TRUNCATE {self.tables} RESTART IDENTITY CASCADE")
                        self._kept = name
                        return
        except psycopg.Error:
            pass  # a database a test left unusable: dropped below
        self._spoilt.discard(name)
        self.server.admin(f"DROP DATABASE {name} WITH (FORCE)")
