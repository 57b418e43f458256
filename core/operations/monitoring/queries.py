"""What every monitoring query shares: the outcomes the figures are defined from, time buckets,
and small SQL helpers that work alike on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import (
    BigInteger,
    Engine,
    case,
    cast,
    func,
    type_coerce,
)

from core.formatting import format_duration
from core.store.db import is_postgres
from core.store.schema import (
    UTCDateTime,
    admin_actions,
    generation_events,
    generation_stats_hourly,
)

events = generation_events.c


actions = admin_actions.c


stats = generation_stats_hourly


Granularity = Literal["hour", "day"]


GRANULARITIES: tuple[Granularity, ...] = get_args(Granularity)


LATENCY_BINS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000)


# A request is served from the cache (hit) or by a generator (miss, or bypass when forced);
# errors served nothing. The product team's numbers are all defined from these.
GENERATED_OUTCOMES = ("miss", "bypass")


SERVED_OUTCOMES = ("hit", *GENERATED_OUTCOMES)


def hit_rate(hits: int, served: int) -> float | None:
    """Hits among the requests that were served; None before any was."""
    return hits / served if served else None


def latency_bin_label(upper_ms: int | None) -> str:
    """`< 5 ms` for a bin, `≥ 20.0 s` for the open last one."""
    return f"< {format_duration(upper_ms)}" if upper_ms is not None else f"≥ {format_duration(LATENCY_BINS_MS[-1])}"


# Fastest first: the order of a latency chart's axis, whatever order the bars are drawn in.
LATENCY_BIN_LABELS = tuple(latency_bin_label(upper) for upper in (*LATENCY_BINS_MS, None))


def time_bucket(engine: Engine, column: Any, granularity: Granularity) -> Any:
    """The start of the hour or day of `column`, read back as an aware UTC datetime."""
    if is_postgres(engine):
        return type_coerce(func.date_trunc(granularity, column), UTCDateTime())
    # The text SQLite stores for a UTCDateTime, so buckets compare with stored values.
    fmt = "%Y-%m-%d %H:00:00.000000" if granularity == "hour" else "%Y-%m-%d 00:00:00.000000"
    return type_coerce(func.strftime(fmt, column), UTCDateTime())


def hourly_bucket(engine: Engine, hourly: Any, granularity: Granularity) -> Any:
    """The time bucket of an hourly row (rollup or raw): its hour, or the day of it."""
    return (hourly.hour if granularity == "hour" else time_bucket(engine, hourly.hour, "day")).label("bucket")


def where_since(query: Any, column: Any, since: datetime | None) -> Any:
    return query if since is None else query.where(column >= since)


def fetch_rows(engine: Engine, query: Any) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def int_sum(column: Any) -> Any:
    # PostgreSQL sums integers as numeric (Decimal in Python): keep them integers.
    return cast(func.coalesce(func.sum(column), 0), BigInteger)


def count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def sum_of(column: Any, condition: Any = None) -> Any:
    value = column if condition is None else case((condition, column), else_=0)
    return func.coalesce(func.sum(value), 0)
