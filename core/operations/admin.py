"""Destructive cache actions, each recorded in `admin_actions` (who, when, what, how many)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import Engine, func, insert, select, type_coerce

from core.contract.cache_key import check_user_id
from core.contract.models import ContractError, FieldError
from core.store import entries, staged_programs
from core.store.schema import UTCDateTime, admin_actions, rollouts, training_programs, utcnow

actions = admin_actions.c
programs = training_programs.c
UNKNOWN_GENERATOR = "unknown"  # how an action names entries made before identities were recorded
# What `admin_actions.action` records. An invalidation names whose entries it deleted (a user
# id, a generator version): the TTL replay (core/operations/monitoring/replay.py) reads them.
Invalidation = Literal["invalidate_user", "retire_generator"]
Action = Literal["cleanup", "recall", Invalidation]
INVALIDATIONS: tuple[Invalidation, ...] = get_args(Invalidation)


def record_action(engine: Engine, *, actor: str, action: Action, target: str | None, removal: entries.Removal) -> None:
    with engine.begin() as connection:
        connection.execute(
            insert(admin_actions).values(
                created_at=utcnow(),
                actor=actor,
                action=action,
                target=target,
                rows_affected=removal.deleted,
                bytes_reclaimed=removal.bytes_reclaimed,
            )
        )


def delete_expired_entries(engine: Engine, *, actor: str) -> entries.Removal:
    removal = entries.delete_expired(engine, actor=actor)
    record_action(engine, actor=actor, action="cleanup", target="expired program entries", removal=removal)
    return replace(removal, staged_dropped=staged_programs.drop_expired(engine))


def last_cleanup(engine: Engine) -> datetime | None:
    """When the last cleanup that finished ran (a cleanup that fails records nothing)."""
    query = select(func.max(actions.created_at)).where(actions.action == "cleanup")
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def invalidate_user(
    engine: Engine, *, actor: str, user_id: str, user_id_check: Callable[[Any], str] = check_user_id
) -> entries.Removal:
    """Delete one user's program entries. `user_id_check` is the database's rule for user ids
    (`Database.check_user_id`: a UUID, in its canonical form, where `user_id` is a uuid
    column): a user id it refuses is a ContractError, never a statement the database refuses."""
    user_id = user_id_check(user_id)
    removal = entries.delete_user_entries(engine, user_id, actor=actor)
    record_action(engine, actor=actor, action="invalidate_user", target=user_id, removal=removal)
    return removal


class NeverMadeAProgram(ContractError):
    """A generator version no program here was made by: a typo, most likely. Nothing was
    deleted or recorded."""

    def __init__(self, version: str, made: list[str]) -> None:
        did = f"the versions that did: {', '.join(made)}" if made else "none has yet"
        super().__init__("invalidation", [FieldError("generator", f"{version} never made a program here ({did})")])


def versions_that_made_programs(engine: Engine) -> list[str]:
    """Every generator identity with a program entry, a program in history, or a rollout (a
    candidate's programs staged or still being made, which an invalidation voids) ("unknown"
    for those made before identities were recorded). History's versions are read by a scan:
    an operator's command pays it, never a coach's request."""
    with engine.connect() as connection:
        in_history = set(connection.execute(select(programs.generator_version).distinct()).scalars())
        in_rollouts = set(connection.execute(select(rollouts.c.generator_version).distinct()).scalars())
    in_cache = {group.generator_version for group in entries.entries_by_generator(engine)}
    return sorted(version or UNKNOWN_GENERATOR for version in in_history | in_cache | in_rollouts)


def retire_generator(engine: Engine, *, actor: str, generator_version: str) -> entries.Removal:
    """Invalidate every program entry made by one generator identity (`generator_version`
    as `python -m core generate` prints it, or "unknown"). Raises NeverMadeAProgram for a
    version that made no program; one whose entries are all gone removes 0."""
    if generator_version not in (made := versions_that_made_programs(engine)):
        raise NeverMadeAProgram(generator_version, made)
    version = None if generator_version == UNKNOWN_GENERATOR else generator_version
    removal = entries.delete_generator_entries(engine, version, actor=actor)
    record_action(engine, actor=actor, action="retire_generator", target=generator_version, removal=removal)
    return removal


@dataclass(frozen=True)
class AdminAction:
    created_at: datetime
    actor: str
    action: Action
    target: str | None
    rows_affected: int
    bytes_reclaimed: int


def recent_actions(engine: Engine, limit: int = 50) -> list[AdminAction]:
    query = (
        select(
            actions.created_at,
            actions.actor,
            actions.action,
            actions.target,
            actions.rows_affected,
            actions.bytes_reclaimed,
        )
        .order_by(actions.created_at.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        return [AdminAction(**row._mapping) for row in connection.execute(query)]


@dataclass(frozen=True)
class ActionTotals:
    """Every recorded run of one kind of action, since the first."""

    action: str
    runs: int
    deleted: int
    bytes_reclaimed: int
    last_at: datetime


def action_totals(engine: Engine) -> list[ActionTotals]:
    query = select(
        actions.action,
        func.count(),
        func.sum(actions.rows_affected),
        func.sum(actions.bytes_reclaimed),
        type_coerce(func.max(actions.created_at), UTCDateTime()),
    ).group_by(actions.action)
    with engine.connect() as connection:
        return [
            ActionTotals(action, runs, int(deleted), int(reclaimed), last_at)
            for action, runs, deleted, reclaimed, last_at in connection.execute(query)
        ]
