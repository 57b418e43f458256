"""Reads and writes of the program entries in `ai_coach_cache`. The table is shared with
other AI-coach features: everything here touches only keys with the `program:` prefix.

This is the only module that changes an entry, through two functions: `write_entry` (a
validated program becomes the key's entry) and `_remove` (every deletion: cleanup,
invalidation, rejection). Each records what happened to the key (core/store/fates.py) in
the same transaction, so that no entry changes without its record."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Float,
    Text,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal_column,
    null,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from core.contract.cache_key import key_sample
from core.prices import NOT_BILLED, TOKEN_FIELDS, Billed
from core.store import fates, staged_programs
from core.store.db import connect_for_one_read, connect_to_write
from core.store.schema import (
    CACHE_KEY_PREFIX,
    ProgramId,
    UTCDateTime,
    ai_coach_cache,
    database_now,
    generation_events,
    json_text,
    rollout_programs,
    training_programs,
)

cache = ai_coach_cache.c
events = generation_events.c
CLEANUP_BATCH_SIZE = 5_000


def _is_program_entry() -> Any:
    return cache.cache_key.startswith(CACHE_KEY_PREFIX, autoescape=True)


@dataclass(frozen=True)
class CacheEntry:
    # The stored program as JSON text, validated straight from text; None when the caller
    # said it already holds this version of the entry.
    data_json: str | None
    # PostgreSQL's row version (xmin), checked on a hit: any change to the row, an upsert
    # or a hand edit, changes it. None on SQLite, where every read fetches the program.
    row_version: str | None
    expires_at: datetime
    created_at: datetime
    updated_at: datetime
    # Which generator made it (None: made before that was recorded), and the tokens that
    # generation was billed (None: not recorded, or the offline generator).
    generator_version: str | None = None
    model: str | None = None
    billed: Billed = NOT_BILLED
    # Whether it had not expired when read, by the database's clock.
    valid: bool = False


# The columns a CacheEntry is read from, between its program and row version and its validity.
ENTRY_COLUMNS = (
    cache.expires_at,
    cache.created_at,
    cache.updated_at,
    cache.generator_version,
    cache.model,
    *(cache[name] for name in TOKEN_FIELDS),
)


def _row_version(dialect: str) -> Any:
    if dialect == "postgresql":
        return cast(literal_column("ai_coach_cache.xmin"), Text)
    return null()


def _read_entry(dialect: str) -> Any:
    version = _row_version(dialect)
    # The program travels only if the row changed since the version the caller knows: a
    # hot entry costs a few bytes per hit, not a serialization of the whole program.
    data = case((version == bindparam("known", type_=Text), null()), else_=cast(cache.data, Text))
    valid = cache.expires_at > database_now(dialect)
    return select(data.label("data_json"), version.label("row_version"), *ENTRY_COLUMNS, valid.label("valid")).where(
        cache.cache_key == bindparam("key")
    )


_READ_ENTRY = {dialect: _read_entry(dialect) for dialect in ("postgresql", "sqlite")}


def read_entry(engine: Engine, key: str, known_row_version: str | None = None) -> CacheEntry | None:
    """The entry under `key`, expired or not: an expired one tells the miss reason. Its
    program is left out when its row version is `known_row_version`. One statement, in no
    transaction of its own (connect_for_one_read)."""
    with connect_for_one_read(engine) as connection:
        row = connection.execute(_READ_ENTRY[connection.dialect.name], {"key": key, "known": known_row_version}).first()
    if row is None:
        return None
    made = (row.expires_at, row.created_at, row.updated_at, row.generator_version, row.model)
    return CacheEntry(row.data_json, row.row_version, *made, billed=Billed.of(row), valid=row.valid)


def database_time(engine: Engine) -> datetime:
    """Now, by the database's clock."""
    with engine.connect() as connection:
        now: datetime = connection.execute(select(database_now(connection.dialect.name))).scalar_one()
        return now


def _upsert(dialect: str, *, made_earlier: bool) -> Any:
    # Both dialects speak INSERT ... ON CONFLICT, each through its own construct.
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    # Written and valid until by the database's clock, as expiry is judged; a program made
    # earlier (pre-warmed by a rollout) is valid for the TTL from when it was made.
    now = database_now(dialect)
    statement = insert(ai_coach_cache).values(
        data=json_text("data_json", dialect),
        created_at=bindparam("made_at", type_=UTCDateTime()) if made_earlier else now,
        updated_at=now,
        expires_at=(
            bindparam("made_until", type_=UTCDateTime())
            if made_earlier
            else database_now(dialect, bindparam("ttl_seconds", type_=Float))
        ),
    )
    changed = (
        "data",
        "onboarding_hash",
        "expires_at",
        "created_at",
        "updated_at",
        "size_bytes",
        "model",
        "generator_version",
        *TOKEN_FIELDS,
    )
    return statement.on_conflict_do_update(
        index_elements=["cache_key"], set_={name: statement.excluded[name] for name in changed}
    ).returning(cache.updated_at, cache.expires_at)


_UPSERT = {
    (dialect, made_earlier): _upsert(dialect, made_earlier=made_earlier)
    for dialect in ("postgresql", "sqlite")
    for made_earlier in (False, True)
}


@dataclass(frozen=True)
class NewEntry:
    """A validated program as the key's entry: who it is for, what made it and what that
    generation was billed; `made_at` when it was made earlier (pre-warmed by a rollout)."""

    key: str
    user_id: str
    onboarding_hash: str
    program_json: str
    model: str
    generator_version: str
    tokens: Billed
    made_at: datetime | None = None


def write_entry(connection: Connection, entry: NewEntry, ttl: timedelta) -> Written:
    """Write the key's entry, valid for `ttl` from now by the database's clock (or from
    `made_at`, when the program was made earlier), and record that it was written. In the
    caller's transaction, which must write (connect_to_write)."""
    made_at = entry.made_at
    row = connection.execute(
        _UPSERT[connection.dialect.name, made_at is not None],
        {
            "cache_key": entry.key,
            "user_id": entry.user_id,
            "data_json": entry.program_json,
            "onboarding_hash": entry.onboarding_hash,
            "ttl_seconds": ttl.total_seconds(),
            "made_at": made_at,
            "made_until": made_at + ttl if made_at else None,
            "size_bytes": len(entry.program_json.encode()),
            "model": entry.model,
            "generator_version": entry.generator_version,
            **entry.tokens.as_columns(),
        },
    ).one()
    written = Written(*row)
    fates.record(connection, key=entry.key, fate="written", entry_expires_at=written.expires_at)
    return written


@dataclass(frozen=True)
class Written:
    """When an entry was written and until when it is valid, as the database stored them."""

    updated_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class Removal:
    deleted: int
    bytes_reclaimed: int
    # Cleanup only: programs rollouts staged that expired, dropped (core/store/staged_programs.py).
    staged_dropped: int = 0
    # An invalidation's: programs rollouts staged (or still asked for) that it voided.
    staged_voided: int = 0


def delete_expired(engine: Engine, *, actor: str, batch_size: int = CLEANUP_BATCH_SIZE) -> Removal:
    """Delete the program entries expired by the database's clock, recording each key's
    entry as expired."""
    conditions = (cache.expires_at <= database_now(engine.dialect.name),)
    return _delete_in_batches(engine, conditions, fates.Removed("expired", actor), batch_size)


def delete_generator_entries(
    engine: Engine, generator_version: str | None, *, actor: str, batch_size: int = CLEANUP_BATCH_SIZE
) -> Removal:
    """Delete the program entries made by one generator identity (None: those made before
    identities were recorded), recording each key's entry as invalidated by `actor`."""
    made_by = (
        cache.generator_version.is_(None) if generator_version is None else cache.generator_version == generator_version
    )
    fate = fates.Removed("invalidated", actor)
    staged = (
        rollout_programs.c.generator_version.is_(None)
        if generator_version is None
        else rollout_programs.c.generator_version == generator_version
    )
    why = f"voided: generator {generator_version or 'unknown'} invalidated by {actor}"
    return _delete_in_batches(engine, (made_by,), fate, batch_size, voided=(staged, why))


def _delete_in_batches(
    engine: Engine,
    conditions: tuple[Any, ...],
    fate: fates.Removed,
    batch_size: int,
    voided: tuple[Any, str] | None = None,
) -> Removal:
    """One short transaction per batch, so that writers (misses upserting their entry) never
    wait long on a bulk deletion. The staged programs `voided` covers (with why) are voided in
    the first, so that none is served once entries begin to go."""
    deleted = reclaimed = staged_voided = 0
    first = True
    while True:
        batch = select(cache.id).where(_is_program_entry(), *conditions).limit(batch_size).scalar_subquery()
        with connect_to_write(engine) as connection, connection.begin():
            if voided is not None and first:
                staged_voided = staged_programs.void(connection, *voided)
            # The conditions are checked again on the row deleted: an entry rewritten meanwhile stays.
            count, size = _remove(connection, (cache.id.in_(batch), *conditions), fate)
        deleted += count
        reclaimed += size
        first = False
        if count < batch_size:
            return Removal(deleted, reclaimed, staged_voided=staged_voided)


def _remove(connection: Connection, conditions: tuple[Any, ...], fate: fates.Removed) -> tuple[int, int]:
    """Delete the program entries `conditions` select and record each key's `fate`, in the
    caller's transaction; how many went and their bytes, summed in the database so that a
    batch of thousands hands one row, not thousands, to Python. Every deletion of entries
    goes through here."""
    conditions = (_is_program_entry(), *conditions)
    statement = delete(ai_coach_cache).where(*conditions)
    dialect = connection.dialect.name
    if dialect == "postgresql":
        removed = statement.returning(cache.cache_key, cache.expires_at, cache.size_bytes).cte("removed")
        recorded = fate.statement(dialect, removed).cte("recorded")
        total = select(func.count(), func.coalesce(func.sum(removed.c.size_bytes), 0)).add_cte(recorded)
        row = connection.execute(total).one()
        return int(row[0]), int(row[1])
    # SQLite cannot DELETE in a CTE; the transaction holds the write lock from its start
    # (connect_to_write), so counting and recording the same rows first is exact.
    matched = select(cache.cache_key, cache.expires_at, cache.size_bytes).where(*conditions).subquery()
    row = connection.execute(select(func.count(), func.coalesce(func.sum(matched.c.size_bytes), 0))).one()
    connection.execute(fate.statement(dialect, matched))
    connection.execute(statement)
    return int(row[0]), int(row[1])


def delete_user_entries(engine: Engine, user_id: str, *, actor: str) -> Removal:
    """Delete a user's program entries, recording each key's entry as invalidated by `actor`."""
    why = f"voided: user {user_id}'s programs invalidated by {actor}"
    with connect_to_write(engine) as connection, connection.begin():
        voided = staged_programs.void(connection, rollout_programs.c.user_id == user_id, why)
        deleted, size = _remove(connection, (cache.user_id == user_id,), fates.Removed("invalidated", actor))
        return Removal(deleted, size, staged_voided=voided)


def delete_entry_holding(connection: Connection, key: str, program_id: ProgramId, *, actor: str) -> bool:
    """Delete the entry under `key` if it still holds the program of history row
    `program_id`, recording it as rejected by `actor`; whether it did. The check is the
    DELETE's own condition, so an entry another instance rewrote meanwhile stays. In the
    caller's transaction, which must write (connect_to_write)."""
    program = select(training_programs.c.program).where(training_programs.c.id == program_id).scalar_subquery()
    deleted, _ = _remove(connection, (cache.cache_key == key, cache.data == program), fates.Removed("rejected", actor))
    return deleted > 0


def delete_entries_holding(connection: Connection, recalled: Any, *, actor: str) -> Removal:
    """Delete the entries that still hold the program of a history row `recalled` selects
    (a condition on training_programs), recording each as recalled by `actor`. An entry
    rewritten with another program stays. In the caller's write transaction."""
    rows = training_programs.c
    holding = (
        select(rows.id)
        .where(recalled, rows.cache_key == cache.cache_key, rows.program == cache.data)
        .correlate(ai_coach_cache)
        .exists()
    )
    deleted, size = _remove(connection, (holding,), fates.Removed("recalled", actor))
    return Removal(deleted, size)


def has_entry(connection: Connection, key: str) -> bool:
    return connection.execute(select(cache.id).where(cache.cache_key == key)).first() is not None


@dataclass(frozen=True)
class EntrySummary:
    cache_key: str
    user_id: str
    created_at: datetime
    expires_at: datetime
    size_bytes: int
    valid: bool  # not expired, by the database's clock
    hit_count: int


def list_entries(engine: Engine, *, user_id: str | None = None, limit: int = 200) -> list[EntrySummary]:
    query = (
        select(
            cache.cache_key,
            cache.user_id,
            cache.created_at,
            cache.expires_at,
            cache.size_bytes,
            (cache.expires_at > database_now(engine.dialect.name)).label("valid"),
        )
        .where(_is_program_entry())
        .order_by(cache.created_at.desc())
        .limit(limit)
    )
    if user_id:
        query = query.where(cache.user_id == user_id)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
        hits = _hits_since_written(connection, [row.cache_key for row in rows])
    return [EntrySummary(**row._mapping, hit_count=hits.get(row.cache_key, 0)) for row in rows]


def _hits_since_written(connection: Connection, keys: list[str]) -> dict[str, int]:
    """Hits of each entry since it was written, counted from the request log rather than on
    the entry, so that serving a hit never writes to (or waits on) the cache row. The
    key_sample condition lets the query use ix_generation_events_key_sample."""
    if not keys:
        return {}
    query = (
        select(events.cache_key, func.count())
        .join(ai_coach_cache, cache.cache_key == events.cache_key)
        .where(
            events.key_sample.in_(sorted({key_sample(k) for k in keys})),
            events.cache_key.in_(keys),
            events.outcome == "hit",
            events.created_at >= cache.created_at,
        )
        .group_by(events.cache_key)
    )
    return {key: count for key, count in connection.execute(query)}


@dataclass(frozen=True)
class GeneratorGroup:
    generator_version: str | None  # None: made before identities were recorded
    model: str | None
    entries: int
    size_bytes: int
    oldest: datetime
    newest: datetime


def entries_by_generator(engine: Engine) -> list[GeneratorGroup]:
    """Program entries grouped by the generator identity that made them, newest first."""
    query = (
        select(
            cache.generator_version,
            func.max(cache.model),
            func.count(),
            func.coalesce(func.sum(cache.size_bytes), 0),
            func.min(cache.created_at),
            func.max(cache.created_at),
        )
        .where(_is_program_entry())
        .group_by(cache.generator_version)
        .order_by(func.max(cache.created_at).desc())
    )
    with engine.connect() as connection:
        return [GeneratorGroup(*row) for row in connection.execute(query)]


def count_entries(engine: Engine, *, user_id: str | None = None) -> dict[str, int]:
    is_valid = cache.expires_at > database_now(engine.dialect.name)
    query = select(
        func.count().filter(is_valid).label("valid_entries"),
        func.count().filter(~is_valid).label("expired_entries"),
        func.coalesce(func.sum(cache.size_bytes).filter(is_valid), 0).label("valid_bytes"),
        func.coalesce(func.sum(cache.size_bytes).filter(~is_valid), 0).label("expired_bytes"),
    ).where(_is_program_entry())
    if user_id:
        query = query.where(cache.user_id == user_id)
    with engine.connect() as connection:
        return dict(connection.execute(query).one()._mapping)


@dataclass(frozen=True)
class Expired:
    """The program entries cleanup has yet to delete, judged by the database's clock."""

    entries: int
    oldest_expired_at: datetime | None
    now: datetime


def expired_entries(engine: Engine) -> Expired:
    now = database_now(engine.dialect.name)
    # Along ix_ai_coach_cache_expires_at: only the expired part of the index is read.
    query = select(func.count(), func.min(cache.expires_at), now).where(_is_program_entry(), cache.expires_at <= now)
    with engine.connect() as connection:
        return Expired(*connection.execute(query).one())
