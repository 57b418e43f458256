"""One generation per cache key at a time. On PostgreSQL an advisory lock keyed from the
cache key holds across processes and app instances; on SQLite (embedded, one process) a
lock per key holds across the threads of the process."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from core.db import is_postgres


class SingleFlightTimeout(TimeoutError):
    def __init__(self, waited_seconds: float) -> None:
        super().__init__(f"an identical generation has been running for over {waited_seconds:.0f} s; try again shortly")


def advisory_lock_id(key: str) -> int:
    """A signed 64-bit lock id from the key; a collision only serialises two generations."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


@contextmanager
def generation_lock(engine: Engine, key: str, *, timeout_seconds: float) -> Iterator[None]:
    lock = _postgres_lock if is_postgres(engine) else _thread_lock
    with lock(engine, key, timeout_seconds):
        yield


@contextmanager
def _postgres_lock(engine: Engine, key: str, timeout_seconds: float) -> Iterator[None]:
    lock_id = advisory_lock_id(key)
    # A session-level lock on a connection of its own, held through the LLM call without an
    # open transaction; if the process dies, PostgreSQL drops the lock with the connection.
    with engine.connect() as connection:
        try:
            with connection.begin():
                connection.execute(text(f"SET LOCAL lock_timeout = '{int(timeout_seconds * 1000)}ms'"))
                connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
                raise SingleFlightTimeout(timeout_seconds) from None
            raise
        try:
            yield
        finally:
            with connection.begin():
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})


_registry_guard = threading.Lock()
_key_locks: dict[str, tuple[threading.Lock, int]] = {}


@contextmanager
def _thread_lock(_engine: Engine, key: str, timeout_seconds: float) -> Iterator[None]:
    with _registry_guard:
        lock, users = _key_locks.get(key, (threading.Lock(), 0))
        _key_locks[key] = (lock, users + 1)
    try:
        if not lock.acquire(timeout=timeout_seconds):
            raise SingleFlightTimeout(timeout_seconds)
        try:
            yield
        finally:
            lock.release()
    finally:
        with _registry_guard:
            lock, users = _key_locks[key]
            if users == 1:
                del _key_locks[key]  # the registry holds only keys in use
            else:
                _key_locks[key] = (lock, users - 1)
