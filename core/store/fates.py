"""What happened to each key's cache entry, recorded when it happens, and the one rule that
turns those records into a miss reason.

A key's record (`cache_entry_fates`, one row per key) is replaced by whatever changes what
the key holds: a miss that wrote the entry (`written`, with the entry's expiry), a miss
whose write failed (`not_cached`), an admin's invalidation (`invalidated`, by whom), a
coach's rejection of the program it held (`rejected`, by whom), cleanup (`expired`). A
failed generation writes nothing and so changes nothing. The request log is never read
for a reason, so pruning or rolling up `generation_events` changes none."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, case, literal, select, true
from sqlalchemy.dialects import postgresql, sqlite

from core.contract.models import PAID_ACCESS
from core.store.schema import cache_entry_fates, database_now

if TYPE_CHECKING:
    from core.store.entries import CacheEntry

Fate = Literal["written", "not_cached", "invalidated", "rejected", "expired"]
MissReason = Literal[
    "first_generation",
    "expired",
    "profile_changed",
    "access_changed",
    "forced_refresh",
    "cache_unavailable",
    "invalid_entry",
    "generator_changed",
    "invalidated",
    "rejected",
    "removed",
    "not_cached",
]
fates = cache_entry_fates.c


@dataclass(frozen=True)
class KeyRecord:
    """The last thing that happened to a key's entry."""

    fate: Fate
    recorded_at: datetime
    entry_expires_at: datetime | None = None  # until when the entry was valid, when one was written
    actor: str | None = None  # who invalidated it, or ran the cleanup


@dataclass(frozen=True)
class Lookup:
    """What looking the key up found, when it could not serve: no entry, an expired one, or
    a valid one it could not use (invalid, or another generator's)."""

    entry: CacheEntry | None = None
    invalid: bool = False
    generator_changed: bool = False
    failed: bool = False  # the cache could not be read


def miss_reason(
    *,
    forced: bool,
    lookup: Lookup,
    record: KeyRecord | None,
    changed_since_previous: tuple[str, ...] | None,
    now: datetime,
) -> tuple[MissReason, tuple[str, ...]]:
    """Why this request is a miss, and the answers that changed when that is the reason.

    What happened to this key comes first: the entry found, then the key's record. Only a
    key that never had an entry is compared with the user's previous program
    (`changed_since_previous`: the fields that differ, None when there is none)."""
    if forced:
        return "forced_refresh", ()
    if lookup.failed:
        return "cache_unavailable", ()
    if lookup.invalid:
        return "invalid_entry", ()
    if lookup.generator_changed:
        return "generator_changed", ()
    entry = lookup.entry
    if entry is not None:
        # Still there, so expired; unless a later write of it failed, which is the news.
        if record is not None and record.fate == "not_cached" and record.recorded_at > entry.updated_at:
            return "not_cached", ()
        return "expired", ()
    if record is not None:
        if record.fate != "written":
            return record.fate, ()
        if record.entry_expires_at is not None and record.entry_expires_at <= now:
            return "expired", ()  # expired, and deleted since by something other than cleanup
        return "removed", ()  # deleted before its time, outside Coach Cache
    if changed_since_previous is None:
        return "first_generation", ()
    if changed_since_previous == (PAID_ACCESS,):
        return "access_changed", changed_since_previous
    if changed_since_previous:
        return "profile_changed", changed_since_previous
    # The same answers as the user's previous program, whose key has no record: a program
    # handed out before keys' fates were recorded (revision 0009), or by the product itself.
    return "expired", ()


def read_record(connection: Connection, key: str) -> tuple[KeyRecord | None, datetime]:
    """The key's record, and the time by the database's clock, which judges its expiry."""
    now = database_now(connection.dialect.name)
    record = connection.execute(
        select(fates.fate, fates.recorded_at, fates.entry_expires_at, fates.actor).where(fates.cache_key == key)
    ).first()
    return (KeyRecord(*record) if record else None), connection.execute(select(now)).scalar_one()


def _upsert(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(cache_entry_fates)
    return statement, {name: statement.excluded[name] for name in ("fate", "recorded_at", "entry_expires_at", "actor")}


def record(
    connection: Connection,
    *,
    key: str,
    fate: Fate,
    entry_expires_at: datetime | None = None,
    actor: str | None = None,
) -> None:
    """Replace the key's record, as of now by the database's clock: its entry was written
    (valid until `entry_expires_at`), or its write failed."""
    statement, replaced = _upsert(connection.dialect.name)
    values = {"cache_key": key, "fate": fate, "entry_expires_at": entry_expires_at, "actor": actor}
    connection.execute(
        statement.values(**values, recorded_at=database_now(connection.dialect.name)).on_conflict_do_update(
            index_elements=["cache_key"], set_=replaced
        )
    )


@dataclass(frozen=True)
class Removed:
    """What a deletion of entries records for each key it removes: `fate` (`expired` for
    cleanup, `invalidated` for an admin's invalidation, `rejected` for a coach's rejection)
    and by whom, as of now by the database's clock."""

    fate: Fate
    actor: str

    def statement(self, dialect: str, rows: Any) -> Any:
        """Record the removal of the entries `rows` selects (`cache_key`, `expires_at`); an
        entry that had expired already is recorded `expired`, which happened to it first."""
        statement, replaced = _upsert(dialect)
        now = database_now(dialect)
        values = select(
            rows.c.cache_key,
            case((rows.c.expires_at <= now, literal("expired")), else_=literal(self.fate)),
            now,
            rows.c.expires_at,
            literal(self.actor),
        )
        if dialect == "sqlite":
            # SQLite parses `INSERT ... SELECT ... ON CONFLICT` only with a WHERE in the SELECT.
            values = values.where(true())
        columns = ["cache_key", "fate", "recorded_at", "entry_expires_at", "actor"]
        return statement.from_select(columns, values).on_conflict_do_update(index_elements=["cache_key"], set_=replaced)
