"""Timing, memory and the database floor."""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import psycopg
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from core.db import is_postgres

AUTOCOMMIT = "-- autocommit"


def summarize(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "p50_ms": round(statistics.median(ordered), 4),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 4),
        "max_ms": round(ordered[-1], 4),
        "n": len(ordered),
    }


def time_calls(call: Callable[[], Any], repetitions: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repetitions):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return summarize(samples)


@contextmanager
def recorded_statements(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement and its driver-level parameters that `engine` sends meanwhile. On
    PostgreSQL, a hit sent in autocommit is recorded with an AUTOCOMMIT marker first, so the
    floor replays it the same way."""
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if not statements and getattr(conn.connection.dbapi_connection, "autocommit", False) is True:
            statements.append((AUTOCOMMIT, None))
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def floor(engine: Engine, statements: list[tuple[str, Any]], repetitions: int) -> dict[str, float]:
    """The same statements through the bare driver (psycopg 3 or sqlite3), one transaction
    per repetition (or in autocommit, as they were sent): what the database costs for a hit."""
    url = make_url(engine.url)
    autocommit = bool(statements) and statements[0][0] == AUTOCOMMIT
    statements = statements[1:] if autocommit else statements
    if is_postgres(engine):
        connection: Any = psycopg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database,
            autocommit=autocommit,
            prepare_threshold=None,  # as the app's engine
        )
    else:
        connection = sqlite3.connect(url.database or ":memory:", isolation_level=None)
        connection.execute("PRAGMA busy_timeout=30000")

    def transaction() -> None:
        cursor = connection.cursor()
        for statement, parameters in statements:
            cursor.execute(statement, parameters)
            if cursor.description is not None:
                cursor.fetchall()
        connection.commit()

    try:
        return time_calls(transaction, repetitions)
    finally:
        connection.close()


class PeakMemory:
    """Peak resident memory of this process while the block runs, sampled every 5 ms."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.baseline_mb = 0.0
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.baseline_mb = self.peak_mb = self.process.memory_info().rss / 2**20
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
