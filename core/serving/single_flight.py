"""One generation per cache key at a time, across threads, processes and app instances.

The lock is a lease (memcache leases, NSDI 2013): a `generation_leases` row per key, claimed
in one atomic upsert that succeeds only where no row exists or the old one has expired,
renewed while the generation runs, deleted when it ends. It lives in the database, so it
holds on SQLite across processes and on PostgreSQL directly or through a transaction-mode
pooler (where a session-level advisory lock may be released on another server connection,
or never). A holder that dies stops renewing: its lease lapses within its period (GENERATION_LEASE_SECONDS).
Every expiry is set and judged by the database's clock in the statement itself, so hosts
whose clocks disagree agree on who holds a lease, and a renewal held up (by a lock, a slow
network) still extends the lease from when it is written. A renewal that finds the lease
taken over says so in the log: a second generation of that key is running.

The waiting policy: a request that does not get the lease polls the cache for the winner's
entry (20 ms, doubling to 250 ms), trying the lease again each time, and gives up after a
bounded time. Each poll is a short transaction: a waiter holds no connection in between, so
twenty coaches waiting on one generation cannot drain the pool the winner needs to save.
If the lease table cannot be used at all (the database refuses), it fails open: two
requests may then both generate, and both still succeed."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from time import perf_counter
from typing import Any, TypeVar

from sqlalchemy import Engine, Float, bindparam, delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from core.store.db import connect_to_write, describe_db_error
from core.store.schema import database_now, generation_leases

log = logging.getLogger(__name__)
POLL_FIRST_SECONDS = 0.02
POLL_MAX_SECONDS = 0.25
T = TypeVar("T")
leases = generation_leases.c


class SingleFlightTimeout(TimeoutError):
    def __init__(self, waited_seconds: float) -> None:
        super().__init__(f"an identical generation has been running for over {waited_seconds:.0f} s; try again shortly")


def once(
    engine: Engine,
    key: str,
    *,
    wait_seconds: float,
    from_cache: Callable[[], T | None],
    produce: Callable[[], T],
    lease_seconds: float,
    on_waiting: Callable[[], None] | None = None,
) -> T:
    """`produce()` under the generation lease for `key`, unless `from_cache()` serves first:
    right after the lease is taken (whoever held it may have just filled the entry) or
    while another request holds it. `on_waiting()` is called once, when this request first
    finds the lease held and begins to wait. Raises SingleFlightTimeout after `wait_seconds`."""
    deadline = perf_counter() + wait_seconds
    pause = POLL_FIRST_SECONDS
    while True:
        lease = Lease.claim(engine, key, lease_seconds)
        if lease is not None:
            with lease:
                served = from_cache()
                return served if served is not None else produce()
        if on_waiting is not None and pause == POLL_FIRST_SECONDS:
            on_waiting()
        if perf_counter() + pause > deadline:
            raise SingleFlightTimeout(wait_seconds)
        time.sleep(pause)
        pause = min(pause * 2, POLL_MAX_SECONDS)
        served = from_cache()
        if served is not None:
            return served


def _lease_end(dialect: str) -> Any:
    return database_now(dialect, bindparam("seconds", type_=Float))


def _claim_statement(dialect: str) -> Any:
    """Insert the lease, or take over one that has expired; RETURNING gives a row only if
    this statement wrote it, i.e. if the caller now holds the lease."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(generation_leases).values(expires_at=_lease_end(dialect))
    return statement.on_conflict_do_update(
        index_elements=["cache_key"],
        set_={"owner": statement.excluded.owner, "expires_at": statement.excluded.expires_at},
        where=leases.expires_at <= database_now(dialect),
    ).returning(leases.owner)


def _renew_statement(dialect: str) -> Any:
    """Extend the caller's lease from now; RETURNING gives no row if it was taken over."""
    owned = (leases.cache_key == bindparam("key"), leases.owner == bindparam("lease_owner"))
    return update(generation_leases).where(*owned).values(expires_at=_lease_end(dialect)).returning(leases.owner)


_CLAIM = {dialect: _claim_statement(dialect) for dialect in ("postgresql", "sqlite")}
_RENEW = {dialect: _renew_statement(dialect) for dialect in ("postgresql", "sqlite")}
_RELEASE = dict.fromkeys(
    ("postgresql", "sqlite"),
    delete(generation_leases)
    .where(leases.cache_key == bindparam("key"), leases.owner == bindparam("lease_owner"))
    .returning(leases.owner),
)


class Lease:
    """A held lease, renewed by a background thread until the `with` block ends."""

    def __init__(self, engine: Engine | None, key: str, owner: str, seconds: float) -> None:
        self._engine, self._key, self._owner, self._seconds = engine, key, owner, seconds
        self._done = threading.Event()
        self._renewer = threading.Thread(target=self._renew_until_done, name=f"lease {key[:40]}", daemon=True)

    @classmethod
    def claim(cls, engine: Engine, key: str, seconds: float) -> Lease | None:
        """The lease on `key` if nobody holds a live one, else None at once. A database
        that refuses gives a lease that locks nothing (fail open)."""
        owner = uuid.uuid4().hex
        try:
            with connect_to_write(engine) as connection, connection.begin():
                claimed = connection.execute(
                    _CLAIM[connection.dialect.name], {"cache_key": key, "owner": owner, "seconds": seconds}
                ).first()
        except DBAPIError as exc:
            log.warning("Single-flight lease unavailable for %s: %s", key, describe_db_error(exc))
            return cls(None, key, owner, seconds)
        return cls(engine, key, owner, seconds) if claimed is not None else None

    def __enter__(self) -> Lease:
        if self._engine is not None:
            self._renewer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._engine is None:
            return
        self._done.set()
        self._renewer.join()
        self._run(_RELEASE, {"key": self._key, "lease_owner": self._owner})

    def _renew_until_done(self) -> None:
        while not self._done.wait(self._seconds / 3):
            renewed = self._run(_RENEW, {"key": self._key, "lease_owner": self._owner, "seconds": self._seconds})
            if renewed is False:
                log.warning(
                    "Generation lease for %s was taken over while this generation ran (a renewal came "
                    "too late): an identical generation may be running too",
                    self._key,
                )

    def _run(self, statements: dict[str, Any], params: dict[str, Any]) -> bool | None:
        """Whether the statement changed a row; None if it failed. Losing the lease (a renewal
        or release that fails) only lets a second generation start: it is logged, never
        raised into the request."""
        assert self._engine is not None
        try:
            with connect_to_write(self._engine) as connection, connection.begin():
                return connection.execute(statements[connection.dialect.name], params).first() is not None
        except DBAPIError as exc:
            log.warning("Generation lease for %s: %s", self._key, describe_db_error(exc))
            return None
