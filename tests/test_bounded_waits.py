"""A stalled database costs a coach seconds, not the stall: PostgreSQL's processes stopped
(SIGSTOP), SQLite's write lock held by another process. The program is still generated and
shown, marked not saved; once the database is back it saves."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.db import make_engine, migrate
from core.service import GenerationResult, ProgramService
from testkit.counting import CountingGenerator
from testkit.pg_server import PostgresServer
from tests.helpers import PROFILE, start_cli

WAIT = 2.0  # DATABASE_WAIT_SECONDS in these tests
# What a request may take in all with the database stalled: its budget, the connection
# attempts it may still make (libpq's shortest connect_timeout is 2 s) and the work around.
BOUND = 12.0


@pytest.fixture
def stallable() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own: the session's is shared with the other tests."""
    server = PostgresServer().start()
    server.wait_ready()
    server.admin("CREATE DATABASE coach")
    yield server
    server.stop()


def within(seconds: float, call: Any) -> tuple[Any, float]:
    """`call()`'s outcome and how long it took, failing the test if it takes over `seconds`
    (the call is left to finish when the database resumes)."""
    outcome: list[Any] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: outcome.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    took = time.monotonic() - started
    assert outcome, f"still waiting on the database after {took:.0f} s"
    return outcome[0], took


def service_on(url: str) -> ProgramService:
    engine = make_engine(url)
    migrate(engine)
    return ProgramService(engine=engine, generator=CountingGenerator(), database_wait_seconds=WAIT)


def ask(service: ProgramService) -> GenerationResult:
    return service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False)


def test_a_hit_while_postgresql_is_stalled_is_shown_within_seconds_and_saved_after(stallable: PostgresServer) -> None:
    service = service_on(stallable.url("coach"))
    first = ask(service)
    assert ask(service).cache_hit  # a hot entry, connections open in the pool
    with stallable.stalled():
        result, took = within(BOUND, lambda: ask(service))
    assert result.program == first.program and result.history_error, result
    assert "could not be saved" in result.history_error
    assert took < BOUND
    saved = service.save_again(result)
    assert saved.history_error is None and saved.training_program_id is not None
    service.engine.dispose()


def test_generate_through_the_cli_while_postgresql_is_stalled_exits_3_within_seconds(
    stallable: PostgresServer, tmp_path: Path
) -> None:
    url = stallable.url("coach")
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(PROFILE))
    args = ("generate", "--user-id", "u1", "--profile", str(profile))
    first = start_cli(url, *args)
    assert first.communicate(timeout=60)[0]
    with stallable.stalled():
        process = start_cli(url, *args, DATABASE_WAIT_SECONDS=str(WAIT))
        started = time.monotonic()
        try:
            out, err = process.communicate(timeout=BOUND + 5)  # a process starts in about 2 s
        finally:
            process.kill()
        took = time.monotonic() - started
    assert process.returncode == 3, err.decode()
    assert json.loads(out)["program"]["weeks"]
    [line] = err.decode().strip().splitlines()[-1:]
    assert "not saved" in line
    assert took < BOUND + 5


def test_a_hit_while_sqlite_is_locked_by_another_process_is_served_within_seconds(tmp_path: Path) -> None:
    path = tmp_path / "coach.db"
    service = service_on(f"sqlite:///{path}")
    first = ask(service)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction, for minutes
    try:
        result, took = within(BOUND, lambda: ask(service))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # WAL readers never wait for a writer: the hit is served from the cache.
    assert result.cache_hit and result.program == first.program
    assert result.history_error and took < BOUND
    assert service.save_again(result).history_error is None
    service.engine.dispose()
