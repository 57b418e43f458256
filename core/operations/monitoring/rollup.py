"""The hourly rollup of the request log: settled hours are summed once into
`generation_stats_hourly`; the hours since are read from the log itself."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    case,
    func,
    or_,
    select,
    true,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite

from core.operations.monitoring.queries import LATENCY_BINS_MS, count_if, events, stats, time_bucket, where_since
from core.prices import TOKEN_FIELDS, WHOLE_FIELDS
from core.store.db import is_postgres
from core.store.schema import (
    SAVED,
    UTCDateTime,
    utcnow,
)


# How long after an hour ends its events are rolled up: longer than any request takes
# (a waiter gives up after the LLM's worst case), so no event arrives for a rolled-up hour.
def _latency_bin() -> Any:
    return case(*[(events.latency_ms < edge, edge) for edge in LATENCY_BINS_MS], else_=-1)


SETTLE = timedelta(hours=1)


def _not_recorded(prefix: str) -> Any:
    """The event's tokens (named after `prefix`) were not recorded (Billed.recorded)."""
    return or_(*(events[prefix + name].is_(None) for name in WHOLE_FIELDS))


def hourly_from_events(engine: Engine, since: datetime | None, until: datetime | None = None) -> Any:
    """Events aggregated like the rollup table's rows."""
    hour = time_bucket(engine, events.created_at, "hour")
    latency_bin = _latency_bin()
    generator_version = func.coalesce(events.generator_version, "")
    model = func.coalesce(events.model, "")
    miss_reason = func.coalesce(events.miss_reason, "")
    sums = {
        prefix + name: func.coalesce(func.sum(events[prefix + name]), 0)
        for prefix in ("", SAVED)
        for name in TOKEN_FIELDS
    }
    columns = {
        "hour": hour,
        "outcome": events.outcome,
        "latency_bin_ms": latency_bin,
        "generator_version": generator_version,
        "model": model,
        "requests": func.count(),
        "latency_ms_sum": func.sum(events.latency_ms),
        **sums,
        "hits_without_tokens": count_if((events.outcome == "hit") & _not_recorded(SAVED)),
        "cache_read_errors": count_if(events.cache_read_error),
        "cache_write_errors": count_if(events.cache_write_error),
        "history_errors": count_if(events.history_error),
        "miss_reason": miss_reason,
    }
    # In the rollup table's column order: the rollup is an INSERT ... SELECT of this.
    query = select(*(columns[column.name].label(column.name) for column in stats.columns)).group_by(
        hour, events.outcome, latency_bin, generator_version, model, miss_reason
    )
    if since is not None:
        query = query.where(events.created_at >= since)
    if until is not None:
        query = query.where(events.created_at < until)
    return query


def rolled_up_until(engine: Engine) -> datetime | None:
    with engine.connect() as connection:
        return connection.execute(select(type_coerce(func.max(stats.c.hour), UTCDateTime()))).scalar_one()


def refresh_rollup(engine: Engine, now: datetime | None = None, *, max_hours: int | None = None) -> datetime | None:
    """Roll up the settled hours not rolled up yet, or only the first `max_hours` of them
    (counted from the first event not rolled up, so gaps without events cost nothing):
    the page catches up a bounded amount per view, `python -m core rollup` everything.
    Numbers are the same either way; hours not rolled up are read raw. Safe to run from
    several instances at once: rows already there are left as they are. Returns the last
    hour rolled up."""
    settled = (now or utcnow()) - SETTLE
    settled = settled.replace(minute=0, second=0, microsecond=0)
    rolled = rolled_up_until(engine)
    start = _first_event_hour(engine, rolled + timedelta(hours=1) if rolled is not None else None)
    if start is None or start >= settled:
        return rolled
    until = settled if max_hours is None else min(settled, start + timedelta(hours=max_hours))
    insert = postgresql.insert if is_postgres(engine) else sqlite.insert
    rows = hourly_from_events(engine, start, until).subquery()
    # SQLite needs a WHERE in an INSERT ... SELECT ... ON CONFLICT, to tell ON from a join.
    source = select(*rows.c).where(true())
    statement = insert(stats).from_select([c.name for c in stats.columns], source).on_conflict_do_nothing()
    with engine.begin() as connection:
        connection.execute(statement)
    return rolled_up_until(engine)


def _first_event_hour(engine: Engine, since: datetime | None) -> datetime | None:
    query = where_since(select(func.min(events.created_at)), events.created_at, since)
    with engine.connect() as connection:
        first = connection.execute(query).scalar_one()
    return first.replace(minute=0, second=0, microsecond=0) if first is not None else None


def hourly(engine: Engine, since: datetime | None) -> Any:
    """Requests per hour, outcome and latency bin since `since` (rounded down to the hour):
    the rollup for settled hours, the raw events after them."""
    since_hour = since.replace(minute=0, second=0, microsecond=0) if since else None
    rolled_until = rolled_up_until(engine)
    if rolled_until is None:
        return hourly_from_events(engine, since_hour).subquery()
    # Up to the hour read above, not whatever the table holds by the time this runs: an hour
    # another instance rolls up meanwhile is read from the events, never twice.
    rolled = select(*stats.columns).where(stats.c.hour <= rolled_until)
    if since_hour is not None:
        rolled = rolled.where(stats.c.hour >= since_hour)
    tail_start = rolled_until + timedelta(hours=1)
    if since_hour is not None:
        tail_start = max(tail_start, since_hour)
    return union_all(rolled, hourly_from_events(engine, tail_start)).subquery()


def rolled_hours(after: datetime | None, until: datetime) -> Any:
    """The rollup's rows of the hours after `after` (None: from the first) up to `until`."""
    query = select(*stats.columns).where(stats.c.hour <= until)
    return (query if after is None else query.where(stats.c.hour > after)).subquery()


def hours_not_rolled_up(engine: Engine, rolled_until: datetime | None) -> Any:
    """The events of the hours after `rolled_until` (None: every event), as rollup rows."""
    return hourly_from_events(engine, rolled_until + timedelta(hours=1) if rolled_until else None).subquery()
