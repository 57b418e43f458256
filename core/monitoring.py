"""What the Cache monitoring page and `python -m core stats` show, aggregated in SQL so
that no query pulls a whole table into Python."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Engine, case, func, literal_column, select, text

from core.cache_store import count_entries
from core.db import is_postgres
from core.schema import ai_coach_cache, generation_events, utcnow
from core.settings import Settings

events = generation_events.c
Granularity = Literal["hour", "day"]
LATENCY_BINS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000)


def time_bucket(engine: Engine, column: Any, granularity: Granularity) -> Any:
    if is_postgres(engine):
        return func.date_trunc(granularity, column)
    fmt = "%Y-%m-%d %H:00:00" if granularity == "hour" else "%Y-%m-%d 00:00:00"
    return func.strftime(fmt, column)


def _since(query: Any, column: Any, since: datetime | None) -> Any:
    return query if since is None else query.where(column >= since)


def _rows(engine: Engine, query: Any) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def _count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


@dataclass(frozen=True)
class Summary:
    requests: int
    hits: int
    misses: int
    bypasses: int
    errors: int
    llm_calls: int
    avg_hit_ms: float | None
    avg_llm_request_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cache_read_errors: int
    cache_write_errors: int

    @property
    def hit_rate(self) -> float | None:
        served = self.hits + self.misses + self.bypasses
        return self.hits / served if served else None

    def cost_per_llm_call(self, settings: Settings) -> float:
        if not self.llm_calls:
            return 0.0
        cost = (
            self.prompt_tokens * settings.price_input_per_million
            + self.completion_tokens * settings.price_output_per_million
        ) / 1_000_000
        return cost / self.llm_calls

    def cost_saved(self, settings: Settings) -> float:
        return self.hits * self.cost_per_llm_call(settings)

    def time_saved_seconds(self) -> float:
        if self.avg_llm_request_ms is None:
            return 0.0
        return self.hits * max(0.0, self.avg_llm_request_ms - (self.avg_hit_ms or 0.0)) / 1000


def summary(engine: Engine, since: datetime | None = None) -> Summary:
    is_llm = events.outcome.in_(("miss", "bypass"))
    query = _since(
        select(
            func.count().label("requests"),
            _count_if(events.outcome == "hit").label("hits"),
            _count_if(events.outcome == "miss").label("misses"),
            _count_if(events.outcome == "bypass").label("bypasses"),
            _count_if(events.outcome == "error").label("errors"),
            _count_if(is_llm).label("llm_calls"),
            func.avg(case((events.outcome == "hit", events.latency_ms))).label("avg_hit_ms"),
            func.avg(case((is_llm, events.latency_ms))).label("avg_llm_request_ms"),
            func.coalesce(func.sum(events.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(events.completion_tokens), 0).label("completion_tokens"),
            _count_if(events.cache_read_error).label("cache_read_errors"),
            _count_if(events.cache_write_error).label("cache_write_errors"),
        ),
        events.created_at,
        since,
    )
    row = _rows(engine, query)[0]
    return Summary(**{k: (float(v) if k.startswith("avg") and v is not None else v) for k, v in row.items()})


def requests_over_time(engine: Engine, since: datetime | None, granularity: Granularity) -> list[dict[str, Any]]:
    """Requests per time bucket and outcome, with LLM tokens spent."""
    bucket = time_bucket(engine, events.created_at, granularity).label("bucket")
    query = (
        _since(
            select(
                bucket,
                events.outcome,
                func.count().label("requests"),
                func.coalesce(func.sum(events.prompt_tokens), 0).label("prompt_tokens"),
                func.coalesce(func.sum(events.completion_tokens), 0).label("completion_tokens"),
            ),
            events.created_at,
            since,
        )
        .group_by(bucket, events.outcome)
        .order_by(bucket)
    )
    return _rows(engine, query)


def errors_over_time(engine: Engine, since: datetime | None, granularity: Granularity) -> list[dict[str, Any]]:
    bucket = time_bucket(engine, events.created_at, granularity).label("bucket")
    failed = events.cache_read_error | events.cache_write_error | events.history_error | (events.outcome == "error")
    query = (
        _since(
            select(
                bucket,
                _count_if(events.cache_read_error).label("cache_read_errors"),
                _count_if(events.cache_write_error).label("cache_write_errors"),
                _count_if(events.history_error).label("history_errors"),
                _count_if(events.outcome == "error").label("generation_errors"),
            ).where(failed),
            events.created_at,
            since,
        )
        .group_by(bucket)
        .order_by(bucket)
    )
    return _rows(engine, query)


def latency_histogram(engine: Engine, since: datetime | None) -> list[dict[str, Any]]:
    """Request counts by latency bin (upper edge in ms; None for the open last bin) and outcome."""
    upper = case(*[(events.latency_ms < edge, edge) for edge in LATENCY_BINS_MS], else_=literal_column("NULL")).label(
        "upper_ms"
    )
    query = _since(
        select(upper, events.outcome, func.count().label("requests")).where(events.outcome != "error"),
        events.created_at,
        since,
    ).group_by(upper, events.outcome)
    return _rows(engine, query)


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


def storage(engine: Engine, now: datetime | None = None) -> Storage:
    counts = count_entries(engine, now)
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
        _since(
            select(bucket, func.count().label("entries"), func.sum(cache.size_bytes).label("bytes")),
            cache.created_at,
            since,
        )
        .group_by(bucket)
        .order_by(bucket)
    )
    return _rows(engine, query)


@dataclass(frozen=True)
class TtlOutcome:
    ttl_hours: float
    requests: int
    llm_calls: int

    @property
    def hit_rate(self) -> float | None:
        return (self.requests - self.llm_calls) / self.requests if self.requests else None


def replay_ttls(engine: Engine, ttl_hours: Sequence[float], since: datetime | None = None) -> list[TtlOutcome]:
    """Replay the recorded requests (key, time) against each TTL: a request is a hit when
    the key's last generation is younger than the TTL; forced refreshes always generate.
    Requests before `since` are not seen, so the window starts with a cold cache."""
    ttls = [timedelta(hours=h) for h in ttl_hours]
    query = _since(
        select(events.cache_key, events.created_at, events.outcome).where(events.outcome != "error"),
        events.created_at,
        since,
    ).order_by(events.cache_key, events.created_at)
    calls = [0] * len(ttls)
    generated_at: list[datetime | None] = [None] * len(ttls)
    current_key, requests = None, 0
    with engine.connect() as connection:
        for key, at, outcome in connection.execution_options(yield_per=10_000).execute(query):
            requests += 1
            if key != current_key:
                current_key, generated_at = key, [None] * len(ttls)
            for i, ttl in enumerate(ttls):
                last = generated_at[i]
                if outcome == "bypass" or last is None or at >= last + ttl:
                    calls[i] += 1
                    generated_at[i] = at
    return [TtlOutcome(h, requests, c) for h, c in zip(ttl_hours, calls, strict=True)]


def window_start(window: str, now: datetime | None = None) -> datetime | None:
    spans = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
    return None if window == "all" else (now or utcnow()) - spans[window]
