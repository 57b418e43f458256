"""Bounded waits on the database: a stalled server (its processes stopped, a network gone
quiet) or a lock held for minutes must cost a coach seconds, not the whole stall.

Every statement has a deadline. A coach's request shares one budget (`request_budget`) among
all its statements: what they wait adds up, the LLM's time between them does not. Any other
statement (a page's query, a lease renewal) gets STATEMENT_SECONDS, a migration's
MIGRATION_SECONDS (`LIMIT`, an execution option: a lock wait or an index build on an adopted
table may be long), except inside a budget: the schema check at a request's start
(`Database.ensure_schema` in the CLI's generate, on a dashboard page) waits no longer than
the request may, and `python -m core migrate` is where a long migration runs.

On PostgreSQL a watchdog thread shuts down the socket of a statement past its deadline: a
stopped server cannot enforce its own `statement_timeout`, and its kernel still acknowledges
TCP keepalives. The driver then fails as for a lost connection, which the pool discards. On
SQLite the only wait is for the write lock: its busy timeout is set to what is left before
each statement. A budget spent fails the next statement (or connection) at once, as an
OperationalError, which callers treat as the database being unavailable."""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

STATEMENT_SECONDS = 60.0
MIGRATION_SECONDS = 600.0
LIMIT = "coach_cache_statement_seconds"  # execution option: this connection's own limit
MIN_CONNECT_SECONDS = 2  # libpq's connect_timeout is whole seconds, at least 2


class DatabaseTooSlow(Exception):
    """The database did not answer within the time this request had for it."""


@dataclass
class Budget:
    """Seconds a request may spend waiting on the database, its statements' time added up
    (not its own work between them, such as the LLM's generation). Inside another budget
    (the CLI's whole run around its request), what it waits is charged to both."""

    seconds: float
    spent: float = 0.0
    within: Budget | None = None

    def left(self) -> float:
        mine = self.seconds - self.spent
        return mine if self.within is None else min(mine, self.within.left())

    def charge(self, seconds: float) -> None:
        self.spent += seconds
        if self.within is not None:
            self.within.charge(seconds)


_budget: ContextVar[Budget | None] = ContextVar("database_budget", default=None)


@contextmanager
def request_budget(seconds: float) -> Iterator[Budget]:
    """Everything this thread asks of the database inside the block, connections included,
    waits `seconds` in all at most (and no longer than an enclosing budget has left)."""
    budget = Budget(seconds, within=_budget.get())
    token = _budget.set(budget)
    try:
        yield budget
    finally:
        _budget.reset(token)


def _seconds_left(options: dict[str, Any] | None = None) -> float:
    # A connection's own limit (a migration's) is still bounded by the budget it runs in:
    # a migration at a request's start (`Database.ensure_schema`) waits no longer than it.
    limit = float(options[LIMIT]) if options and LIMIT in options else STATEMENT_SECONDS
    budget = _budget.get()
    return limit if budget is None else min(limit, budget.left())


def _started(info: dict[str, Any]) -> None:
    info["started"] = time.monotonic()


def _charge(info: dict[str, Any]) -> None:
    started = info.pop("started", None)
    budget = _budget.get()
    if started is not None and budget is not None:
        budget.charge(time.monotonic() - started)


def _spent(statement: str | None) -> OperationalError:
    budget = _budget.get()
    seconds = budget.seconds if budget else STATEMENT_SECONDS
    return OperationalError(statement, None, DatabaseTooSlow(f"the database did not answer within {seconds:g} s"))


class _Watchdog:
    """One thread per engine, asleep until the earliest deadline of a statement in flight."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []
        self._live: dict[int, int] = {}  # ticket -> socket file descriptor
        self._tickets = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def watch(self, fileno: int, seconds: float) -> int:
        ticket = next(self._tickets)
        with self._wake:
            self._live[ticket] = fileno
            heapq.heappush(self._heap, (time.monotonic() + seconds, ticket, fileno))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="database watchdog", daemon=True)
                self._thread.start()
            elif self._heap[0][1] == ticket:
                self._wake.notify()
        return ticket

    def done(self, ticket: int) -> None:
        with self._wake:
            self._live.pop(ticket, None)

    def _run(self) -> None:
        with self._wake:
            while True:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, ticket, fileno = self._heap[0]
                if deadline > time.monotonic():
                    self._wake.wait(deadline - time.monotonic())
                    continue
                heapq.heappop(self._heap)
                del self._live[ticket]
                _shut_down(fileno)


def _shut_down(fileno: int) -> None:
    """End the connection's socket under the driver's feet: its wait returns at once with
    'server closed the connection'. A duplicate descriptor is shut down and closed; the
    driver's own is left for the driver to close."""
    try:
        with socket.socket(fileno=os.dup(fileno)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # finished or closed meanwhile


def bound_postgres(engine: Engine) -> None:
    watchdog = _Watchdog()

    @event.listens_for(engine, "do_connect")
    def _connect_within_budget(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        # A server that accepts the connection and never answers costs connect_timeout.
        left = _seconds_left()
        if left <= 0:
            raise _spent(None)
        cparams["connect_timeout"] = max(MIN_CONNECT_SECONDS, min(int(cparams.get("connect_timeout", left)), int(left)))
        info: dict[str, Any] = {}
        _started(info)
        try:
            return dialect.connect(*cargs, **cparams)
        finally:
            _charge(info)

    def watch(conn: Any, seconds: float) -> None:
        conn.info["watch"] = watchdog.watch(conn.connection.dbapi_connection.pgconn.socket, seconds)

    def unwatch(info: dict[str, Any]) -> None:
        if (ticket := info.pop("watch", None)) is not None:
            watchdog.done(ticket)

    _limit_statements(engine, watch, unwatch)


def _limit_statements(
    engine: Engine, begin: Callable[[Any, float], None], end: Callable[[dict[str, Any]], None]
) -> None:
    """Before each statement, `begin(connection, seconds it may take)`, or fail at once if
    none are left; after it (or its failure), charge its time and `end(connection info)`."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        left = _seconds_left(conn.get_execution_options())
        if left <= 0:
            raise _spent(statement)
        begin(conn, left)
        _started(conn.info)

    def _ended(info: dict[str, Any]) -> None:
        _charge(info)
        end(info)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, *_args: Any) -> None:
        _ended(conn.info)

    @event.listens_for(engine, "handle_error")
    def _failed(context: Any) -> None:
        if context.connection is not None:
            _ended(context.connection.info)


# How far SQLite's busy timeout may be from what is left of the budget before it is set
# again: a statement may wait this much longer (or shorter), and a hit's statements, a
# fraction of a millisecond apart, need not each send a PRAGMA first.
BUSY_TIMEOUT_SLACK_MS = 5


def bound_sqlite(engine: Engine) -> None:
    def busy_timeout(conn: Any, seconds: float) -> None:
        # The only wait SQLite has is for another connection's write lock.
        wanted = int(seconds * 1000)
        kept = conn.connection.info  # the driver connection's, across checkouts
        current = kept.get("busy_timeout_ms")
        if current is None or abs(current - wanted) > BUSY_TIMEOUT_SLACK_MS:
            conn.connection.dbapi_connection.execute(f"PRAGMA busy_timeout={wanted}")
            kept["busy_timeout_ms"] = wanted

    _limit_statements(engine, busy_timeout, lambda _info: None)
