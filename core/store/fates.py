"""What happened to each key's cache entry, recorded when it happens (core/serving/miss_reasons.py
turns those records into a miss reason).

A key's record (`cache_entry_fates`, one row per key) is replaced by whatever changes what
the key holds: a miss that wrote the entry (`written`, with the entry's expiry), a miss
whose write failed (`not_cached`), an admin's invalidation (`invalidated`, by whom), a
coach's rejection of the program it held (`rejected`, by whom), a recall of the programs it
held (`recalled`, by whom: core/operations/recall.py), cleanup (`expired`). A
failed generation writes nothing and so changes nothing. The request log is never read
for a reason, so pruning or rolling up `generation_events` changes none."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Connection, case, literal, select, true
from sqlalchemy.dialects import postgresql, sqlite

from core.store.schema import cache_entry_fates, database_now

# Every fate but `written` is itself why the key's next request is a miss: MissReason
# (core/serving/miss_reasons.py) is made of these and the reasons that need no record.
UnwrittenFate = Literal["not_cached", "invalidated", "rejected", "recalled", "expired"]
Fate = Literal["written", UnwrittenFate]


fates = cache_entry_fates.c


@dataclass(frozen=True)
class KeyRecord:
    """The last thing that happened to a key's entry."""

    fate: Fate
    recorded_at: datetime
    entry_expires_at: datetime | None = None  # until when the entry was valid, when one was written
    actor: str | None = None  # who invalidated it, or ran the cleanup


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
    cleanup, `invalidated` for an admin's invalidation, `rejected` for a coach's rejection,
    `recalled` for a recall)
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
