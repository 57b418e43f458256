"""The product team's figures: requests by outcome, hit rate, time saved, traffic, errors,
latency and storage, over a window or per time bucket."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    case,
    func,
    literal,
    select,
    text,
)

from core.operations.monitoring.queries import (
    GENERATED_OUTCOMES,
    SERVED_OUTCOMES,
    Granularity,
    events,
    fetch_rows,
    hit_rate,
    hourly_bucket,
    int_sum,
    latency_bin_label,
    sum_of,
    time_bucket,
    where_since,
)
from core.operations.monitoring.rollup import hourly, hourly_from_events
from core.prices import TOKEN_FIELDS
from core.store.db import is_postgres
from core.store.entries import count_entries
from core.store.schema import (
    ai_coach_cache,
    utcnow,
)


@dataclass(frozen=True)
class Summary:
    requests: int
    hits: int
    misses: int
    bypasses: int
    errors: int
    # Programs a generator made (misses and forced refreshes); LLM calls are those of an
    # OpenAI generator (see GeneratorUsage), the offline generator calls none.
    generations: int
    avg_hit_ms: float | None
    avg_generation_ms: float | None
    cache_read_errors: int
    cache_write_errors: int

    @property
    def served(self) -> int:
        return self.hits + self.misses + self.bypasses

    @property
    def hit_rate(self) -> float | None:
        return hit_rate(self.hits, self.served)

    def time_saved_seconds(self) -> float:
        if self.avg_generation_ms is None:
            return 0.0
        return self.hits * max(0.0, self.avg_generation_ms - (self.avg_hit_ms or 0.0)) / 1000


def summary(engine: Engine, since: datetime | None = None) -> Summary:
    """The figures since `since`, rounded down to its hour (the rollup's hours)."""
    return _summary_of(engine, hourly(engine, since).c)


def summary_between(engine: Engine, since: datetime, until: datetime) -> Summary:
    """The figures of exactly [since, until), read from the raw events: an alert's last 15
    minutes, or the same hour a week ago, are not whole hours of the rollup."""
    return _summary_of(engine, hourly_from_events(engine, since, until).subquery().c)


def _summary_of(engine: Engine, h: Any) -> Summary:
    is_generation = h.outcome.in_(GENERATED_OUTCOMES)

    def average(condition: Any) -> Any:
        return sum_of(h.latency_ms_sum, condition) / func.nullif(sum_of(h.requests, condition), 0)

    query = select(
        sum_of(h.requests).label("requests"),
        sum_of(h.requests, h.outcome == "hit").label("hits"),
        sum_of(h.requests, h.outcome == "miss").label("misses"),
        sum_of(h.requests, h.outcome == "bypass").label("bypasses"),
        sum_of(h.requests, h.outcome == "error").label("errors"),
        sum_of(h.requests, is_generation).label("generations"),
        average(h.outcome == "hit").label("avg_hit_ms"),
        average(is_generation).label("avg_generation_ms"),
        sum_of(h.cache_read_errors).label("cache_read_errors"),
        sum_of(h.cache_write_errors).label("cache_write_errors"),
    )
    row = fetch_rows(engine, query)[0]
    # Sums come back as Decimal or float depending on the database: normalize.
    values: dict[str, Any] = {
        k: (None if v is None else float(v)) if k.startswith("avg") else int(v or 0) for k, v in row.items()
    }
    return Summary(**values)


def requests_over_time(engine: Engine, since: datetime | None, granularity: Granularity) -> list[dict[str, Any]]:
    """Requests per time bucket and outcome, with LLM tokens spent."""
    h = hourly(engine, since).c
    bucket = hourly_bucket(engine, h, granularity)
    query = (
        select(
            bucket,
            h.outcome,
            int_sum(h.requests).label("requests"),
            *(int_sum(h[name]).label(name) for name in TOKEN_FIELDS),
        )
        .group_by(bucket, h.outcome)
        .order_by(bucket, h.outcome)
    )
    return fetch_rows(engine, query)


@dataclass(frozen=True)
class Traffic:
    bucket: datetime
    hits: int
    generations: int
    hit_rate: float | None


def traffic_over_time(engine: Engine, since: datetime | None, granularity: Granularity) -> list[Traffic]:
    """Per time bucket: hits, generations and the hit rate, defined as in `Summary`."""
    h = hourly(engine, since).c
    bucket = hourly_bucket(engine, h, granularity)
    query = (
        select(
            bucket,
            int_sum(case((h.outcome == "hit", h.requests), else_=0)).label("hits"),
            int_sum(case((h.outcome.in_(GENERATED_OUTCOMES), h.requests), else_=0)).label("generations"),
        )
        .group_by(bucket)
        .order_by(bucket)
    )
    return [
        Traffic(r["bucket"], r["hits"], r["generations"], hit_rate(r["hits"], r["hits"] + r["generations"]))
        for r in fetch_rows(engine, query)
    ]


def errors_over_time(engine: Engine, since: datetime | None, granularity: Granularity) -> list[dict[str, Any]]:
    h = hourly(engine, since).c
    bucket = hourly_bucket(engine, h, granularity)
    sums = {
        "cache_read_errors": int_sum(h.cache_read_errors),
        "cache_write_errors": int_sum(h.cache_write_errors),
        "history_errors": int_sum(h.history_errors),
        "generation_errors": int_sum(case((h.outcome == "error", h.requests), else_=0)),
    }
    any_error = sum(sums.values(), literal(0)) > 0
    query = (
        select(bucket, *(total.label(name) for name, total in sums.items()))
        .group_by(bucket)
        .having(any_error)
        .order_by(bucket)
    )
    return fetch_rows(engine, query)


def latency_histogram(engine: Engine, since: datetime | None) -> list[dict[str, Any]]:
    """Served requests by latency bin (upper edge in ms, None for the open last bin; its
    label) and outcome, fastest bin first."""
    h = hourly(engine, since).c
    query = (
        select(h.latency_bin_ms, h.outcome, int_sum(h.requests).label("requests"))
        .where(h.outcome.in_(SERVED_OUTCOMES))
        .group_by(h.latency_bin_ms, h.outcome)
    )
    rows = []
    for r in fetch_rows(engine, query):
        upper = None if r["latency_bin_ms"] == -1 else r["latency_bin_ms"]
        rows.append(
            {"upper_ms": upper, "label": latency_bin_label(upper), "outcome": r["outcome"], "requests": r["requests"]}
        )
    return sorted(rows, key=lambda r: (r["upper_ms"] is None, r["upper_ms"] or 0, r["outcome"]))


@dataclass(frozen=True)
class Storage:
    valid_entries: int
    expired_entries: int
    valid_bytes: int
    expired_bytes: int
    # PostgreSQL: the relation's real size (table, TOAST, indexes); SQLite: JSON bytes stored.
    table_bytes: int

    @property
    def entries(self) -> int:
        return self.valid_entries + self.expired_entries

    @property
    def average_entry_bytes(self) -> float | None:
        return (self.valid_bytes + self.expired_bytes) / self.entries if self.entries else None


def storage(engine: Engine) -> Storage:
    counts = count_entries(engine)
    if is_postgres(engine):
        with engine.connect() as connection:
            table_bytes = connection.execute(text("SELECT pg_total_relation_size('ai_coach_cache')")).scalar_one()
    else:
        table_bytes = counts["valid_bytes"] + counts["expired_bytes"]
    return Storage(**counts, table_bytes=int(table_bytes))


def entries_written_over_time(engine: Engine, since: datetime | None, granularity: Granularity) -> list[dict[str, Any]]:
    """Entries still in the cache by when they were written, with their bytes."""
    cache = ai_coach_cache.c
    bucket = time_bucket(engine, cache.created_at, granularity).label("bucket")
    query = (
        where_since(
            select(bucket, func.count().label("entries"), func.sum(cache.size_bytes).label("bytes")),
            cache.created_at,
            since,
        )
        .group_by(bucket)
        .order_by(bucket)
    )
    return fetch_rows(engine, query)


# "Lately", for how long a generator takes: its last 20 successful generations of the last
# 7 days. The week bounds the walk back along ix_generation_events_created_at (newest first,
# stopping at the 20th) for a generator that has made none lately; 20 is enough for a median
# and recent enough to follow a slower model or a busier server.
RECENT_GENERATIONS = 20


RECENT_SPAN = timedelta(days=7)


def recent_generation_seconds(engine: Engine, generator_version: str, now: datetime | None = None) -> float | None:
    """The median time this generator identity's recent requests that generated a program
    took, click to program, in seconds; None when it has generated none lately."""
    query = (
        select(events.latency_ms)
        .where(
            events.created_at >= (now or utcnow()) - RECENT_SPAN,
            events.generator_version == generator_version,
            events.outcome.in_(GENERATED_OUTCOMES),
        )
        .order_by(events.created_at.desc())
        .limit(RECENT_GENERATIONS)
    )
    with engine.connect() as connection:
        latencies = connection.execute(query).scalars().all()
    return statistics.median(latencies) / 1000 if latencies else None
