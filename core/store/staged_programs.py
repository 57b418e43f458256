"""Programs a rollout staged for a candidate generator identity (core/operations/rollout/), as the
generation service takes them: on a miss under that identity, the newest valid staged
program for the key is claimed once, becomes the key's cache entry and is served as a hit
that says it was pre-warmed. Cleanup drops the programs of those that expired unused; an
invalidation (of a user, a generator, by a rejection) voids those it covers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Text, and_, bindparam, cast, null, select, update

from core.prices import TOKEN_FIELDS, Billed
from core.store.db import connect_to_write
from core.store.schema import database_now, rollout_programs

staged = rollout_programs.c


@dataclass(frozen=True)
class StagedProgram:
    id: int
    rollout_id: int
    model: str
    program_json: str
    # When it was generated: it is valid for the TTL from then, like any entry.
    generated_at: datetime
    expires_at: datetime
    billed: Billed


def _takeable(dialect: str) -> Any:
    return and_(
        staged.cache_key == bindparam("key"),
        staged.generator_version == bindparam("version"),
        staged.state == "staged",
        staged.used_at.is_(None),
        staged.expires_at > database_now(dialect),
    )


def has_staged(engine: Engine, key: str, generator_version: str) -> bool:
    """Whether a usable staged program waits for the key: one read, no lock, so that a miss
    with nothing staged (nearly every one) never takes a write lock for it."""
    query = select(staged.id).where(_takeable(engine.dialect.name)).limit(1)
    with engine.connect() as connection:
        return connection.execute(query, {"key": key, "version": generator_version}).first() is not None


def claim(connection: Connection, key: str, generator_version: str) -> StagedProgram | None:
    """Take the key's newest usable staged program, marking it used so that no other
    request or instance takes it again; None when there is none. In the caller's write
    transaction (connect_to_write), which also writes it as the key's entry."""
    dialect = connection.dialect.name
    newest = (
        select(staged.id)
        .where(_takeable(dialect))
        .order_by(staged.generated_at.desc())
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    statement = (
        update(rollout_programs)
        .where(staged.id == newest, staged.used_at.is_(None))
        .values(used_at=database_now(dialect))
        .returning(
            staged.id,
            staged.rollout_id,
            staged.model,
            cast(staged.program, Text).label("program_json"),
            staged.generated_at,
            staged.expires_at,
            *(staged[name] for name in TOKEN_FIELDS),
        )
    )
    row = connection.execute(statement, {"key": key, "version": generator_version}).first()
    if row is None:
        return None
    made = (row.model, row.program_json, row.generated_at, row.expires_at)
    return StagedProgram(row.id, row.rollout_id, *made, billed=Billed.of(row))


def mark_invalid(connection: Connection, staged_id: int, error: str) -> None:
    """A claimed program that no longer passes validation: never offered again, and not
    counted as used (nor as what a used one saved)."""
    connection.execute(
        update(rollout_programs)
        .where(staged.id == staged_id)
        .values(state="invalid", error=error, used_at=None, program=null(), size_bytes=0)
    )


def void(connection: Connection, covered: Any, why: str) -> int:
    """Void the staged programs, and the requests still out, that `covered` selects (an
    invalidation's: a user's, a generator's, a rejected key's), so that none is served after
    it: their programs dropped, `why` recorded; how many. In the caller's write transaction,
    the one that invalidates the entries. A voided request's answer, when it comes, is billed
    and never staged (core/operations/rollout/)."""
    statement = (
        update(rollout_programs)
        .where(covered, staged.state.in_(("staged", "pending")), staged.used_at.is_(None))
        .values(state="voided", error=why, program=null(), size_bytes=0)
    )
    return connection.execute(statement).rowcount


def drop_expired(engine: Engine) -> int:
    """Drop the programs of staged and tried rows that expired (a used one's program is the
    entry's by then; a trial's was there to be read); the rows stay, so a rollout's counts
    outlive its programs."""
    expired = and_(
        staged.state.in_(("staged", "tried")),
        staged.program.is_not(None),
        staged.expires_at <= database_now(engine.dialect.name),
    )
    with connect_to_write(engine) as connection, connection.begin():
        return connection.execute(update(rollout_programs).where(expired).values(program=null())).rowcount
