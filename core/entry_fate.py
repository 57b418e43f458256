"""Why a key has no entry, from what the database recorded about that key: the events of
the misses that wrote it (with their entry's expiry) and the admin actions since. It does
not depend on whether cleanup has deleted an expired entry yet."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import Connection, or_, select

from core.cache_key import key_sample
from core.schema import admin_actions, generation_events

Fate = Literal["expired", "invalidated", "not_cached"]
events = generation_events.c
actions = admin_actions.c
UNKNOWN_GENERATOR = "unknown"  # how an action names entries made before identities were recorded


def why_no_entry(connection: Connection, *, key: str, user_id: str, now: datetime) -> Fate | None:
    """For a key with no entry: `not_cached` if its last generation could not be written to
    the cache; else, if an entry was written, `invalidated` if an admin removed it before it
    expired, `expired` if it expired; None if no entry was ever written for it."""
    last = connection.execute(
        select(events.created_at, events.cache_write_error, events.entry_expires_at, events.generator_version)
        .where(
            events.key_sample == key_sample(key),
            events.cache_key == key,
            events.outcome.in_(("miss", "bypass", "error")),
        )
        .order_by(events.created_at.desc(), events.id.desc())
        .limit(1)
    ).first()
    if last is None:
        return None
    if last.cache_write_error or last.entry_expires_at is None:
        return "not_cached"
    removed_at = connection.execute(
        select(actions.created_at)
        .where(
            actions.created_at >= last.created_at,
            or_(
                (actions.action == "invalidate_user") & (actions.target == user_id),
                (actions.action == "retire_generator")
                & (actions.target == (last.generator_version or UNKNOWN_GENERATOR)),
            ),
        )
        .order_by(actions.created_at)
        .limit(1)
    ).scalar()
    if removed_at is not None and removed_at < last.entry_expires_at:
        return "invalidated"
    if last.entry_expires_at <= now:
        return "expired"
    return "invalidated"  # gone before its time by other hands (a hand-made DELETE)
