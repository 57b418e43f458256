"""Reads and writes of the program entries in `ai_coach_cache`. The table is shared with
other AI-coach features: everything here touches only keys with the `program:` prefix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Text, cast, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from core.schema import CACHE_KEY_PREFIX, ai_coach_cache, generation_events, utcnow

cache = ai_coach_cache.c
events = generation_events.c
CLEANUP_BATCH_SIZE = 5_000


def _is_program_entry() -> Any:
    return cache.cache_key.startswith(CACHE_KEY_PREFIX, autoescape=True)


@dataclass(frozen=True)
class CacheEntry:
    # The stored program as JSON text: validated straight from text on a hit, and saved to
    # history as is, so a hit never decodes and re-encodes it in Python.
    data_json: str
    expires_at: datetime
    created_at: datetime

    def is_valid(self, now: datetime) -> bool:
        return self.expires_at > now


def read_entry(connection: Connection, key: str) -> CacheEntry | None:
    """The entry under `key`, expired or not: an expired one tells the miss reason."""
    row = connection.execute(
        select(cast(cache.data, Text), cache.expires_at, cache.created_at).where(cache.cache_key == key)
    ).first()
    return CacheEntry(*row) if row else None


def _insert_for(connection: Connection) -> Any:
    # Both dialects speak INSERT ... ON CONFLICT, each through its own construct.
    return postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert


def upsert_entry(
    connection: Connection,
    *,
    key: str,
    user_id: str,
    onboarding_hash: str,
    program: dict[str, Any],
    now: datetime,
    ttl: timedelta,
) -> None:
    values = {
        "data": program,
        "onboarding_hash": onboarding_hash,
        "expires_at": now + ttl,
        "created_at": now,
        "updated_at": now,
        "size_bytes": len(json.dumps(program, separators=(",", ":")).encode()),
    }
    statement = _insert_for(connection)(ai_coach_cache).values(cache_key=key, user_id=user_id, **values)
    connection.execute(statement.on_conflict_do_update(index_elements=["cache_key"], set_=values))


@dataclass(frozen=True)
class Removal:
    deleted: int
    bytes_reclaimed: int


def delete_expired(engine: Engine, *, now: datetime | None = None, batch_size: int = CLEANUP_BATCH_SIZE) -> Removal:
    """Delete expired program entries, one short transaction per batch so that writers
    (misses upserting their entry) never wait long on the cleanup."""
    now = now or utcnow()
    expired = (_is_program_entry(), cache.expires_at <= now)
    deleted = reclaimed = 0
    while True:
        batch = select(cache.id).where(*expired).limit(batch_size).scalar_subquery()
        with engine.begin() as connection:
            # Expiry is checked again on the row deleted: an entry refreshed meanwhile stays.
            sizes = (
                connection.execute(
                    delete(ai_coach_cache).where(cache.id.in_(batch), *expired).returning(cache.size_bytes)
                )
                .scalars()
                .all()
            )
        deleted += len(sizes)
        reclaimed += sum(sizes)
        if len(sizes) < batch_size:
            return Removal(deleted, reclaimed)


def delete_user_entries(engine: Engine, user_id: str) -> Removal:
    with engine.begin() as connection:
        sizes = (
            connection.execute(
                delete(ai_coach_cache).where(_is_program_entry(), cache.user_id == user_id).returning(cache.size_bytes)
            )
            .scalars()
            .all()
        )
    return Removal(len(sizes), sum(sizes))


@dataclass(frozen=True)
class EntrySummary:
    cache_key: str
    user_id: str
    created_at: datetime
    expires_at: datetime
    size_bytes: int
    hit_count: int


def list_entries(engine: Engine, *, user_id: str | None = None, limit: int = 200) -> list[EntrySummary]:
    # Hits are counted from the request log rather than on the entry, so that serving a hit
    # never writes to (or waits on) the cache row.
    hits = (
        select(func.count())
        .where(
            events.cache_key == cache.cache_key,
            events.created_at >= cache.created_at,
            events.outcome == "hit",
        )
        .scalar_subquery()
    )
    query = (
        select(
            cache.cache_key,
            cache.user_id,
            cache.created_at,
            cache.expires_at,
            cache.size_bytes,
            hits.label("hit_count"),
        )
        .where(_is_program_entry())
        .order_by(cache.created_at.desc())
        .limit(limit)
    )
    if user_id:
        query = query.where(cache.user_id == user_id)
    with engine.connect() as connection:
        return [EntrySummary(**row._mapping) for row in connection.execute(query)]


def count_entries(engine: Engine, now: datetime | None = None) -> dict[str, int]:
    now = now or utcnow()
    is_valid = cache.expires_at > now
    query = select(
        func.count().filter(is_valid).label("valid_entries"),
        func.count().filter(~is_valid).label("expired_entries"),
        func.coalesce(func.sum(cache.size_bytes).filter(is_valid), 0).label("valid_bytes"),
        func.coalesce(func.sum(cache.size_bytes).filter(~is_valid), 0).label("expired_bytes"),
    ).where(_is_program_entry())
    with engine.connect() as connection:
        return dict(connection.execute(query).one()._mapping)
