"""Each alert rule's state (`alert_states`), shared by every instance and cron run: whether it
fires, what it saw, and what the webhook was last told. A rule whose state differs from what
was told is a message to send; a checker claims it (a conditional UPDATE, by the database's
clock) before sending, so two checkers at once send it once, and settles it after. Each
function is one statement in a transaction of its own, with no session state: it works
through a transaction-mode pooler."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from core.store.db import connect_to_write
from core.store.schema import alert_states, database_now

states = alert_states.c


@dataclass(frozen=True)
class Observed:
    """What one rule saw at one check."""

    rule: str
    firing: bool
    seen: str  # in words
    figures: dict[str, Any]


@dataclass(frozen=True)
class Message:
    """A change of state to tell the webhook, claimed by one checker until it settles it."""

    rule: str
    firing: bool
    seen: str
    figures: dict[str, Any]
    changed_at: datetime
    claimed_by: str


@dataclass(frozen=True)
class State:
    rule: str
    firing: bool
    seen: str
    changed_at: datetime
    notified_firing: bool
    delivery_error: str | None


def _upsert(dialect: str) -> Any:
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(alert_states)
    new = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=["rule"],
        set_={
            "firing": new.firing,
            "seen": new.seen,
            "figures": new.figures,
            "checked_at": new.checked_at,
            "changed_at": case((states.firing != new.firing, new.checked_at), else_=states.changed_at),
        },
        # A check that read the tables earlier than the last one recorded must not undo it.
        where=states.checked_at <= new.checked_at,
    )


def record(engine: Engine, observed: list[Observed], checked_at: datetime) -> None:
    """Each rule's state as this check saw it. A rule seen for the first time was told
    nothing: if it fires, that is a message to send."""
    rows = [
        {
            "rule": o.rule,
            "firing": o.firing,
            "seen": o.seen,
            "figures": o.figures,
            "checked_at": checked_at,
            "changed_at": checked_at,
            "notified_firing": False,
        }
        for o in observed
    ]
    with connect_to_write(engine) as connection, connection.begin():
        connection.execute(_upsert(connection.dialect.name), rows)


def claim(engine: Engine, rule: str, seconds: float) -> Message | None:
    """The rule's message to send, if it has one that no other checker holds, now held by
    this caller for `seconds`: one that dies sending gives it up to the checks after that."""
    token = uuid.uuid4().hex
    with connect_to_write(engine) as connection, connection.begin():
        dialect = connection.dialect.name
        now = database_now(dialect)
        statement = (
            update(alert_states)
            .where(
                states.rule == rule,
                states.firing != states.notified_firing,
                or_(states.claimed_until.is_(None), states.claimed_until <= now),
            )
            .values(claimed_by=token, claimed_until=database_now(dialect, seconds))
            .returning(states.rule, states.firing, states.seen, states.figures, states.changed_at, states.claimed_by)
        )
        row = connection.execute(statement).first()
        return Message(*row) if row is not None else None


def settle(engine: Engine, message: Message, error: str | None) -> None:
    """Release the claim: the webhook now knows the state sent, or (`error`, never the URL)
    it is sent again on the next check."""
    told = {"notified_firing": message.firing} if error is None else {}
    statement = (
        update(alert_states)
        .where(states.rule == message.rule, states.claimed_by == message.claimed_by)
        .values(claimed_by=None, claimed_until=None, delivery_error=error, **told)
    )
    with connect_to_write(engine) as connection, connection.begin():
        connection.execute(statement)


def read(engine: Engine) -> list[State]:
    query = select(
        states.rule, states.firing, states.seen, states.changed_at, states.notified_firing, states.delivery_error
    ).order_by(states.rule)
    with engine.connect() as connection:
        return [State(*row) for row in connection.execute(query)]
