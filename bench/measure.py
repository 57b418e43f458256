"""Timing, memory and the database floor."""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil
import psycopg
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from core.store.db import is_postgres


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


@dataclass(frozen=True)
class Sent:
    """A statement as the engine sent it: its text, its driver-level parameters, and whether
    its connection was in autocommit (a statement of its own) or in a transaction."""

    statement: str
    parameters: Any
    autocommit: bool


@contextmanager
def recorded_statements(engine: Engine) -> Iterator[list[Sent]]:
    """Every statement `engine` sends meanwhile, so that the floor replays them alike."""
    statements: list[Sent] = []

    def record(conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        autocommit = getattr(conn.connection.dbapi_connection, "autocommit", False) is True
        statements.append(Sent(statement, parameters, autocommit))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def round_trips(statements: list[Sent]) -> int:
    """What the statements cost in round trips on PostgreSQL: each one, plus a BEGIN and a
    COMMIT for each run of statements sent in a transaction."""
    transactions = sum(
        1 for i, sent in enumerate(statements) if not sent.autocommit and (i == 0 or statements[i - 1].autocommit)
    )
    return len(statements) + 2 * transactions


def floor(engine: Engine, statements: list[Sent], repetitions: int) -> dict[str, float]:
    """The same statements through the bare driver (psycopg 3 or sqlite3), each in autocommit
    or in a transaction as it was sent: what the database costs for a hit."""
    url = make_url(engine.url)
    if is_postgres(engine):

        def connect(autocommit: bool) -> Any:
            return psycopg.connect(
                host=url.host,
                port=url.port,
                user=url.username,
                password=url.password,
                dbname=url.database,
                autocommit=autocommit,
                prepare_threshold=None,  # as the app's engine
            )

        connections = {True: connect(True), False: connect(False)}
    else:
        # sqlite3 in its own autocommit mode: the engine's BEGIN statements are recorded too.
        bare = sqlite3.connect(url.database or ":memory:", isolation_level=None)
        bare.execute("PRAGMA busy_timeout=30000")
        connections = {True: bare, False: bare}

    def hit() -> None:
        for i, sent in enumerate(statements):
            connection = connections[sent.autocommit]
            if sent.statement.startswith("BEGIN") and connection.in_transaction:
                connection.commit()  # SQLite: the read's transaction ended where the write's began
            cursor = connection.cursor()
            cursor.execute(sent.statement, sent.parameters)
            if cursor.description is not None:
                cursor.fetchall()
            if not sent.autocommit and (i + 1 == len(statements) or statements[i + 1].autocommit):
                connection.commit()

    try:
        return time_calls(hit, repetitions)
    finally:
        for connection in set(connections.values()):
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
