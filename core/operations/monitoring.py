"""What the Cache monitoring page and `python -m core stats` show, aggregated in SQL so
that no query pulls a whole table into Python."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

import numpy as np
from sqlalchemy import (
    BigInteger,
    Engine,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    text,
    true,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite

from core.formatting import format_duration
from core.operations.admin import UNKNOWN_GENERATOR
from core.operations.fit_report import FitReport, fit_by_generator
from core.settings import OFFLINE_MODEL, ModelPrice, Settings
from core.store.db import is_postgres
from core.store.entries import count_entries
from core.store.schema import (
    UTCDateTime,
    admin_actions,
    ai_coach_cache,
    generation_events,
    generation_stats_hourly,
    program_rejections,
    training_programs,
    utcnow,
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


def _bucket(engine: Engine, hourly: Any, granularity: Granularity) -> Any:
    """The time bucket of an hourly row (rollup or raw): its hour, or the day of it."""
    return (hourly.hour if granularity == "hour" else time_bucket(engine, hourly.hour, "day")).label("bucket")


def _since(query: Any, column: Any, since: datetime | None) -> Any:
    return query if since is None else query.where(column >= since)


def _rows(engine: Engine, query: Any) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def _int_sum(column: Any) -> Any:
    # PostgreSQL sums integers as numeric (Decimal in Python): keep them integers.
    return cast(func.coalesce(func.sum(column), 0), BigInteger)


def _count_if(condition: Any) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _latency_bin() -> Any:
    return case(*[(events.latency_ms < edge, edge) for edge in LATENCY_BINS_MS], else_=-1)


# How long after an hour ends its events are rolled up: longer than any request takes
# (a waiter gives up after the LLM's worst case), so no event arrives for a rolled-up hour.
SETTLE = timedelta(hours=1)


def _hourly_from_events(engine: Engine, since: datetime | None, until: datetime | None = None) -> Any:
    """Events aggregated like the rollup table's rows."""
    hour = time_bucket(engine, events.created_at, "hour")
    latency_bin = _latency_bin()
    generator_version = func.coalesce(events.generator_version, "")
    model = func.coalesce(events.model, "")
    # In the rollup table's column order: the rollup is an INSERT ... SELECT of this.
    query = select(
        hour.label("hour"),
        events.outcome,
        latency_bin.label("latency_bin_ms"),
        generator_version.label("generator_version"),
        model.label("model"),
        func.count().label("requests"),
        func.sum(events.latency_ms).label("latency_ms_sum"),
        func.coalesce(func.sum(events.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(events.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(events.saved_prompt_tokens), 0).label("saved_prompt_tokens"),
        func.coalesce(func.sum(events.saved_completion_tokens), 0).label("saved_completion_tokens"),
        _count_if((events.outcome == "hit") & events.saved_prompt_tokens.is_(None)).label("hits_without_tokens"),
        _count_if(events.cache_read_error).label("cache_read_errors"),
        _count_if(events.cache_write_error).label("cache_write_errors"),
        _count_if(events.history_error).label("history_errors"),
        func.coalesce(func.sum(events.cached_tokens), 0).label("cached_tokens"),
        func.coalesce(func.sum(events.reasoning_tokens), 0).label("reasoning_tokens"),
        func.coalesce(func.sum(events.saved_cached_tokens), 0).label("saved_cached_tokens"),
    ).group_by(hour, events.outcome, latency_bin, generator_version, model)
    if since is not None:
        query = query.where(events.created_at >= since)
    if until is not None:
        query = query.where(events.created_at < until)
    return query


def _rolled_up_until(engine: Engine) -> datetime | None:
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
    rolled = _rolled_up_until(engine)
    start = _first_event_hour(engine, rolled + timedelta(hours=1) if rolled is not None else None)
    if start is None or start >= settled:
        return rolled
    until = settled if max_hours is None else min(settled, start + timedelta(hours=max_hours))
    insert = postgresql.insert if is_postgres(engine) else sqlite.insert
    rows = _hourly_from_events(engine, start, until).subquery()
    # SQLite needs a WHERE in an INSERT ... SELECT ... ON CONFLICT, to tell ON from a join.
    source = select(*rows.c).where(true())
    statement = insert(stats).from_select([c.name for c in stats.columns], source).on_conflict_do_nothing()
    with engine.begin() as connection:
        connection.execute(statement)
    return _rolled_up_until(engine)


def _first_event_hour(engine: Engine, since: datetime | None) -> datetime | None:
    query = _since(select(func.min(events.created_at)), events.created_at, since)
    with engine.connect() as connection:
        first = connection.execute(query).scalar_one()
    return first.replace(minute=0, second=0, microsecond=0) if first is not None else None


def _hourly(engine: Engine, since: datetime | None) -> Any:
    """Requests per hour, outcome and latency bin since `since` (rounded down to the hour):
    the rollup for settled hours, the raw events after them."""
    since_hour = since.replace(minute=0, second=0, microsecond=0) if since else None
    rolled_until = _rolled_up_until(engine)
    if rolled_until is None:
        return _hourly_from_events(engine, since_hour).subquery()
    rolled = select(*stats.columns)
    if since_hour is not None:
        rolled = rolled.where(stats.c.hour >= since_hour)
    tail_start = rolled_until + timedelta(hours=1)
    if since_hour is not None:
        tail_start = max(tail_start, since_hour)
    return union_all(rolled, _hourly_from_events(engine, tail_start)).subquery()


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
    def hit_rate(self) -> float | None:
        return hit_rate(self.hits, self.hits + self.misses + self.bypasses)

    def time_saved_seconds(self) -> float:
        if self.avg_generation_ms is None:
            return 0.0
        return self.hits * max(0.0, self.avg_generation_ms - (self.avg_hit_ms or 0.0)) / 1000


def summary(engine: Engine, since: datetime | None = None) -> Summary:
    h = _hourly(engine, since).c
    is_generation = h.outcome.in_(GENERATED_OUTCOMES)

    def average(condition: Any) -> Any:
        return _total(h.latency_ms_sum, condition) / func.nullif(_total(h.requests, condition), 0)

    query = select(
        _total(h.requests).label("requests"),
        _total(h.requests, h.outcome == "hit").label("hits"),
        _total(h.requests, h.outcome == "miss").label("misses"),
        _total(h.requests, h.outcome == "bypass").label("bypasses"),
        _total(h.requests, h.outcome == "error").label("errors"),
        _total(h.requests, is_generation).label("generations"),
        average(h.outcome == "hit").label("avg_hit_ms"),
        average(is_generation).label("avg_generation_ms"),
        _total(h.cache_read_errors).label("cache_read_errors"),
        _total(h.cache_write_errors).label("cache_write_errors"),
    )
    row = _rows(engine, query)[0]
    # Sums come back as Decimal or float depending on the database: normalize.
    values: dict[str, Any] = {
        k: (None if v is None else float(v)) if k.startswith("avg") else int(v or 0) for k, v in row.items()
    }
    return Summary(**values)


def _total(column: Any, condition: Any = None) -> Any:
    value = column if condition is None else case((condition, column), else_=0)
    return func.coalesce(func.sum(value), 0)


FREE = ModelPrice(input=0.0, output=0.0)


@dataclass(frozen=True)
class Spend:
    """What billed tokens cost, by kind of token, each at its price (ModelPrice.cost)."""

    input: float = 0.0  # input not read from the server's prompt cache
    cached_input: float = 0.0
    output: float = 0.0  # reasoning included

    @classmethod
    def of(cls, price: ModelPrice, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> Spend:
        return cls(
            input=price.cost(prompt_tokens - cached_tokens, 0),
            cached_input=price.cost(cached_tokens, 0, cached_tokens=cached_tokens),
            output=price.cost(0, completion_tokens),
        )

    @property
    def total(self) -> float:
        return self.input + self.cached_input + self.output

    def __add__(self, other: Spend) -> Spend:
        return Spend(self.input + other.input, self.cached_input + other.cached_input, self.output + other.output)


@dataclass(frozen=True)
class GeneratorUsage:
    """What one generator identity did in a window (or a time bucket). Hits count for the
    generator that made the entry they served; misses, refreshes and errors for the one asked."""

    generator_version: str | None  # None: events recorded before generators were
    model: str | None
    hits: int = 0
    generations: int = 0
    errors: int = 0
    # Every billed token, failed generations (refused, truncated, invalid) included; of the
    # input, what the server read from its prompt cache, of the output, what went on reasoning ...
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    # ... those of the generations that produced a program ...
    generation_prompt_tokens: int = 0
    generation_completion_tokens: int = 0
    generation_cached_tokens: int = 0
    # ... and, for hits, those of the generations that made the entries served: what they saved.
    saved_prompt_tokens: int = 0
    saved_completion_tokens: int = 0
    saved_cached_tokens: int = 0
    hits_without_tokens: int = 0  # hits on entries whose generation's tokens were not recorded
    # Of the programs it handed out (hits and generations), how many a coach rejected.
    rejected: int = 0

    @property
    def kind(self) -> Literal["openai", "offline"] | None:
        version = self.generator_version or ""
        if version.startswith("openai-"):
            return "openai"
        return "offline" if version.startswith("offline-") or self.model == OFFLINE_MODEL else None

    @property
    def label(self) -> str:
        if self.generator_version is None:
            return f"{self.model} (version not recorded)" if self.model else "not recorded"
        return f"{self.model} · {self.generator_version}"

    @property
    def hit_rate(self) -> float | None:
        return hit_rate(self.hits, self.hits + self.generations)

    @property
    def rejected_share(self) -> float | None:
        """Rejected among the programs it handed out; None before it handed any out."""
        served = self.hits + self.generations
        return self.rejected / served if served else None

    @property
    def cached_share(self) -> float | None:
        """The share of its billed input tokens the server read from its prompt cache; None
        before any input was billed. A server that does not report it counts as none cached."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None

    @property
    def llm_calls(self) -> int:
        """Calls billed by an LLM: the generations and failures of an OpenAI generator."""
        return self.generations + self.errors if self.kind == "openai" else 0

    @property
    def llm_calls_avoided(self) -> int:
        return self.hits if self.kind == "openai" else 0

    def price(self, settings: Settings) -> ModelPrice | None:
        if self.kind == "offline":
            return FREE
        return settings.price_of(self.model) if self.model else None

    def spend(self, settings: Settings) -> Spend | None:
        """What the LLM billed, failed generations included, by kind of token; None without a price."""
        price = self.price(settings)
        return Spend.of(price, self.prompt_tokens, self.cached_tokens, self.completion_tokens) if price else None

    def cost_spent(self, settings: Settings) -> float | None:
        """What the LLM billed, failed generations included; None without a price."""
        spend = self.spend(settings)
        return spend.total if spend else None

    def cost_saved(self, settings: Settings) -> float | None:
        """The billed cost of the generations whose entries the hits served."""
        price = self.price(settings)
        if price is None:
            return None
        return price.cost(
            self.saved_prompt_tokens, self.saved_completion_tokens, cached_tokens=self.saved_cached_tokens
        )

    def generation_cost(self, settings: Settings) -> float | None:
        """What the generations that produced a program were billed; None without a price."""
        price = self.price(settings)
        if price is None:
            return None
        return price.cost(
            self.generation_prompt_tokens,
            self.generation_completion_tokens,
            cached_tokens=self.generation_cached_tokens,
        )


def _usage(engine: Engine, since: datetime | None, granularity: Granularity | None) -> list[dict[str, Any]]:
    """Requests and tokens per generator and outcome (and time bucket, with a granularity)."""
    h = _hourly(engine, since).c
    keys = [h.generator_version, h.model, h.outcome]
    if granularity is not None:
        keys.insert(0, _bucket(engine, h, granularity))
    sums = (
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "saved_prompt_tokens",
        "saved_completion_tokens",
        "saved_cached_tokens",
    )
    query = (
        select(*keys, *(_int_sum(h[name]).label(name) for name in (*sums, "hits_without_tokens")))
        .group_by(*keys)
        .order_by(*keys)
    )
    return _rows(engine, query)


def _add_outcome(usage: GeneratorUsage, row: dict[str, Any]) -> GeneratorUsage:
    outcome, requests = row["outcome"], row["requests"]
    generated = outcome in GENERATED_OUTCOMES
    return replace(
        usage,
        hits=usage.hits + (requests if outcome == "hit" else 0),
        generations=usage.generations + (requests if generated else 0),
        errors=usage.errors + (requests if outcome == "error" else 0),
        prompt_tokens=usage.prompt_tokens + row["prompt_tokens"],
        completion_tokens=usage.completion_tokens + row["completion_tokens"],
        cached_tokens=usage.cached_tokens + row["cached_tokens"],
        reasoning_tokens=usage.reasoning_tokens + row["reasoning_tokens"],
        generation_prompt_tokens=usage.generation_prompt_tokens + (row["prompt_tokens"] if generated else 0),
        generation_completion_tokens=usage.generation_completion_tokens
        + (row["completion_tokens"] if generated else 0),
        generation_cached_tokens=usage.generation_cached_tokens + (row["cached_tokens"] if generated else 0),
        saved_prompt_tokens=usage.saved_prompt_tokens + row["saved_prompt_tokens"],
        saved_completion_tokens=usage.saved_completion_tokens + row["saved_completion_tokens"],
        saved_cached_tokens=usage.saved_cached_tokens + row["saved_cached_tokens"],
        hits_without_tokens=usage.hits_without_tokens + row["hits_without_tokens"],
    )


Row = dict[str, Any]


def _grouped(rows: list[Row], key: Callable[[Row], tuple[Any, ...]]) -> dict[tuple[Any, ...], GeneratorUsage]:
    grouped: dict[tuple[Any, ...], GeneratorUsage] = {}
    for row in rows:
        k = key(row)
        usage = grouped.get(k) or GeneratorUsage(row["generator_version"] or None, row["model"] or None)
        grouped[k] = _add_outcome(usage, row)
    return grouped


def _rejected(engine: Engine, since: datetime | None, granularity: Granularity | None) -> dict[tuple[Any, ...], int]:
    """The programs handed out since `since` (rounded down to the hour, as `_hourly` does)
    that coaches rejected, per generator identity, keyed as `_grouped` keys its usage (and
    per time bucket of when they were handed out, so that each is a share of that bucket's
    programs). A program rejected twice counts once."""
    programs, rejected = training_programs.c, program_rejections.c
    keys = [
        func.coalesce(programs.generator_version, "").label("generator_version"),
        func.coalesce(programs.model, "").label("model"),
    ]
    if granularity is not None:
        keys.insert(0, time_bucket(engine, programs.created_at, granularity).label("bucket"))
    query = (
        select(*keys, func.count(func.distinct(programs.id)))
        .select_from(program_rejections.join(training_programs, programs.id == rejected.training_program_id))
        .group_by(*keys)
    )
    since_hour = since.replace(minute=0, second=0, microsecond=0) if since else None
    with engine.connect() as connection:
        return {tuple(row[:-1]): row[-1] for row in connection.execute(_since(query, programs.created_at, since_hour))}


def usage_by_generator(engine: Engine, since: datetime | None = None) -> list[GeneratorUsage]:
    """Each generator identity's requests, tokens, savings and rejections in the window,
    busiest first."""
    grouped = _grouped(_usage(engine, since, None), lambda r: (r["generator_version"], r["model"]))
    rejected = _rejected(engine, since, None)
    usage = [replace(u, rejected=rejected.get(key, 0)) for key, u in grouped.items()]
    return sorted(usage, key=lambda u: -(u.hits + u.generations + u.errors))


def usage_over_time(
    engine: Engine, since: datetime | None, granularity: Granularity
) -> list[tuple[datetime, GeneratorUsage]]:
    """Each generator identity's usage per time bucket, in time order."""
    grouped = _grouped(_usage(engine, since, granularity), lambda r: (r["bucket"], r["generator_version"], r["model"]))
    rejected = _rejected(engine, since, granularity)
    return [(key[0], replace(usage, rejected=rejected.get(key, 0))) for key, usage in grouped.items()]


@dataclass(frozen=True)
class Costs:
    """The window's LLM spend and savings, each model at its own price."""

    # What was billed, by kind of token: input, cached input, output.
    spend: Spend
    saved: float
    llm_calls: int
    llm_calls_avoided: int
    # Average cost of a generation that produced a program: what the TTL what-if prices a call at.
    per_generation: float
    # Models that billed tokens without a price in MODEL_PRICES: left out of the sums.
    unpriced_models: tuple[str, ...]
    # Hits on LLM entries whose generation's tokens were not recorded: their saving is unknown.
    hits_saving_unknown: int

    @property
    def spent(self) -> float:
        return self.spend.total


def costs(usage: Sequence[GeneratorUsage], settings: Settings) -> Costs:
    priced = [u for u in usage if u.price(settings) is not None]
    unpriced = sorted({u.model or "not recorded" for u in usage if u.price(settings) is None and u.prompt_tokens})
    generations = sum(u.generations for u in priced)
    generation_cost = sum(u.generation_cost(settings) or 0.0 for u in priced)
    spend = sum((u.spend(settings) or Spend() for u in priced), Spend())
    return Costs(
        spend=spend,
        saved=sum(u.cost_saved(settings) or 0.0 for u in priced),
        llm_calls=sum(u.llm_calls for u in usage),
        llm_calls_avoided=sum(u.llm_calls_avoided for u in usage),
        per_generation=generation_cost / generations if generations else 0.0,
        unpriced_models=tuple(unpriced),
        hits_saving_unknown=sum(u.hits_without_tokens for u in usage if u.kind != "offline"),
    )


def requests_over_time(engine: Engine, since: datetime | None, granularity: Granularity) -> list[dict[str, Any]]:
    """Requests per time bucket and outcome, with LLM tokens spent."""
    h = _hourly(engine, since).c
    bucket = _bucket(engine, h, granularity)
    query = (
        select(
            bucket,
            h.outcome,
            _int_sum(h.requests).label("requests"),
            _int_sum(h.prompt_tokens).label("prompt_tokens"),
            _int_sum(h.completion_tokens).label("completion_tokens"),
        )
        .group_by(bucket, h.outcome)
        .order_by(bucket, h.outcome)
    )
    return _rows(engine, query)


@dataclass(frozen=True)
class Traffic:
    bucket: datetime
    hits: int
    generations: int
    hit_rate: float | None


def traffic_over_time(engine: Engine, since: datetime | None, granularity: Granularity) -> list[Traffic]:
    """Per time bucket: hits, generations and the hit rate, defined as in `Summary`."""
    h = _hourly(engine, since).c
    bucket = _bucket(engine, h, granularity)
    query = (
        select(
            bucket,
            _int_sum(case((h.outcome == "hit", h.requests), else_=0)).label("hits"),
            _int_sum(case((h.outcome.in_(GENERATED_OUTCOMES), h.requests), else_=0)).label("generations"),
        )
        .group_by(bucket)
        .order_by(bucket)
    )
    return [
        Traffic(r["bucket"], r["hits"], r["generations"], hit_rate(r["hits"], r["hits"] + r["generations"]))
        for r in _rows(engine, query)
    ]


def errors_over_time(engine: Engine, since: datetime | None, granularity: Granularity) -> list[dict[str, Any]]:
    h = _hourly(engine, since).c
    bucket = _bucket(engine, h, granularity)
    sums = {
        "cache_read_errors": _int_sum(h.cache_read_errors),
        "cache_write_errors": _int_sum(h.cache_write_errors),
        "history_errors": _int_sum(h.history_errors),
        "generation_errors": _int_sum(case((h.outcome == "error", h.requests), else_=0)),
    }
    any_error = sum(sums.values(), literal(0)) > 0
    query = (
        select(bucket, *(total.label(name) for name, total in sums.items()))
        .group_by(bucket)
        .having(any_error)
        .order_by(bucket)
    )
    return _rows(engine, query)


def latency_histogram(engine: Engine, since: datetime | None) -> list[dict[str, Any]]:
    """Served requests by latency bin (upper edge in ms, None for the open last bin; its
    label) and outcome, fastest bin first."""
    h = _hourly(engine, since).c
    query = (
        select(h.latency_bin_ms, h.outcome, _int_sum(h.requests).label("requests"))
        .where(h.outcome.in_(SERVED_OUTCOMES))
        .group_by(h.latency_bin_ms, h.outcome)
    )
    rows = []
    for r in _rows(engine, query):
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
    generations: int
    # Share of cache keys replayed: 1.0, or a uniform sample when the window is large.
    sampled_share: float = 1.0

    @property
    def hit_rate(self) -> float | None:
        return (self.requests - self.generations) / self.requests if self.requests else None

    @property
    def estimated_generations(self) -> float:
        """The window's generations: a sample's scaled up to every key."""
        return self.generations / self.sampled_share

    def cost(self, costs: Costs) -> float:
        """What those generations would have been billed, each at the window's average cost
        of a generation that produced a program."""
        return self.estimated_generations * costs.per_generation


# The TTLs the what-if always compares, beside the configured one and the one asked for.
WHAT_IF_TTLS = (1.0, 6.0, 24.0, 72.0, 168.0)

# Replaying 20 000 requests estimates a hit rate to about a percentage point.
REPLAY_MAX_REQUESTS = 20_000


def _epoch_microseconds(engine: Engine, column: Any) -> Any:
    """Whole microseconds since 1970, exactly: a request exactly one TTL after a generation
    is a miss, and floating-point seconds would make that a coin toss."""
    if is_postgres(engine):
        return cast(func.extract("epoch", column) * 1_000_000, BigInteger)
    # SQLite stores 'YYYY-MM-DD HH:MM:SS.ffffff' (core.schema.UTCDateTime).
    seconds = cast(func.strftime("%s", column), BigInteger)
    return seconds * 1_000_000 + cast(func.substr(column, 21, 6), BigInteger)


INVALIDATIONS = ("invalidate_user", "retire_generator")


def _invalidated(engine: Engine, since: datetime | None) -> dict[str, list[str]]:
    """Whom the window's invalidations named, by action: user ids, generator versions."""
    query = _since(
        select(actions.action, actions.target).where(actions.action.in_(INVALIDATIONS)).distinct(),
        actions.created_at,
        since,
    )
    named: dict[str, list[str]] = {action: [] for action in INVALIDATIONS}
    for row in _rows(engine, query):
        named[row["action"]].append(row["target"])
    return named


def _replayed_requests(engine: Engine, since: datetime | None, key_samples: int | None) -> Any:
    """The served requests (errors served nothing, as in `Summary.hit_rate`), key by key in
    time order: (first of its key, microseconds, a generation no TTL can skip). That is a
    forced refresh, a miss because a coach rejected the entry's program, or the first
    request after an admin invalidated the key's entry: its user's entries
    (`invalidate_user`), or its generator's (`retire_generator`; the entry's generator is
    the one the key's previous event names, the hit's entry's or the miss's)."""
    # In the order of ix_generation_events_key_sample, so a sample is an index range; ties
    # in time are taken in the order they were logged.
    in_order = (events.key_sample, events.cache_key, events.created_at, events.id)

    def previous(column: Any, name: str) -> Any:
        return func.lag(column).over(order_by=in_order).label(name)

    served = _since(
        select(
            *in_order,
            events.outcome,
            events.miss_reason,
            events.user_id,
            previous(events.cache_key, "previous_key"),
            previous(events.created_at, "previous_at"),
            previous(events.generator_version, "previous_version"),
        ).where(events.outcome != "error"),
        events.created_at,
        since,
    )
    if key_samples is not None:
        served = served.where(events.key_sample < key_samples)
    r = served.subquery()
    entry_generator = func.coalesce(r.c.previous_version, UNKNOWN_GENERATOR)
    invalidated_since_previous = (
        select(literal(1))
        .where(
            actions.created_at > r.c.previous_at,
            actions.created_at <= r.c.created_at,
            or_(
                (actions.action == "invalidate_user") & (actions.target == r.c.user_id),
                (actions.action == "retire_generator") & (actions.target == entry_generator),
            ),
        )
        .exists()
    )
    # Looked up only for the requests of a user or generator an invalidation named: the
    # others, nearly all, cost one comparison with a short list.
    named = _invalidated(engine, since)
    affected = or_(r.c.user_id.in_(named["invalidate_user"]), entry_generator.in_(named["retire_generator"]))
    return select(
        func.coalesce(r.c.cache_key != r.c.previous_key, True),
        _epoch_microseconds(engine, r.c.created_at),
        (r.c.outcome == "bypass")
        | (func.coalesce(r.c.miss_reason, "") == "rejected")
        | case((affected, invalidated_since_previous), else_=False),
    ).order_by(r.c.key_sample, r.c.cache_key, r.c.created_at, r.c.id)


@dataclass(frozen=True)
class ServedRequests:
    """The window's served requests as the TTL replay reads them, key by key in time order
    (see `_replayed_requests`): read once, replayed against any TTL without the database."""

    new_key: np.ndarray  # 1 for the first request of its key
    micros: np.ndarray  # whole microseconds since 1970
    forced: np.ndarray  # 1 for a request that generates whatever the TTL
    # Share of cache keys read: 1.0, or a uniform sample when the window is large.
    sampled_share: float

    def replay(self, ttl_hours: Sequence[float]) -> list[TtlOutcome]:
        """A request is a hit when its key's last generation is younger than the TTL, unless
        it is forced (see `_replayed_requests`). The window starts with a cold cache."""
        n = len(self.micros)
        if not n:
            return [TtlOutcome(h, 0, 0, self.sampled_share) for h in ttl_hours]
        # One sorted axis for all keys: each key's times shifted past the previous key's, so a
        # search from inside one key never skips the next key's first request.
        ttls = [round(hours * 3_600_000_000) for hours in ttl_hours]
        start = int(self.micros.min())
        span = int(self.micros.max()) - start + max(ttls) + 1
        axis = np.cumsum(self.new_key) * span + (self.micros - start)
        # The first request after each one that generates whatever the TTL.
        forced_at = np.where(self.forced == 1, np.arange(n), n)
        next_forced = np.append(np.minimum.accumulate(forced_at[::-1])[::-1][1:], n)
        outcomes = []
        for hours, ttl in zip(ttl_hours, ttls, strict=True):
            following = np.minimum(np.searchsorted(axis, axis + ttl, side="left"), next_forced).tolist()
            calls, i = 0, 0
            while i < n:  # from each generation straight to the next one
                calls += 1
                i = following[i]
            outcomes.append(TtlOutcome(hours, n, calls, self.sampled_share))
        return outcomes


def _served_requests(engine: Engine, since: datetime | None, totals: Summary, max_requests: int) -> ServedRequests:
    """Above `max_requests` served in the window (`totals`), a uniform sample of keys, so the
    cost stays bounded. Requests before `since` are not read."""
    served = totals.hits + totals.generations
    share, key_samples = 1.0, None
    if served > max_requests:
        # Each key_sample value holds 1/64 of the keys, uniformly (the digest decides it).
        key_samples = max(1, math.ceil(64 * max_requests / served))
        share = key_samples / 64
    with engine.connect() as connection:
        # The driver's own tuples of three integers: at 1 M events, building SQLAlchemy's Rows
        # for the 30 000 requests read cost more than the query (160 of 250 ms on PostgreSQL).
        rows = connection.execute(_replayed_requests(engine, since, key_samples)).cursor.fetchall()
    table = np.array(rows, dtype=np.int64).reshape(len(rows), 3)
    return ServedRequests(new_key=table[:, 0], micros=table[:, 1], forced=table[:, 2], sampled_share=share)


def replay_ttls(
    engine: Engine,
    ttl_hours: Sequence[float],
    since: datetime | None = None,
    max_requests: int = REPLAY_MAX_REQUESTS,
) -> list[TtlOutcome]:
    """Replay the served requests (key, time) against each TTL: a request is a hit when its
    key's last generation is younger than the TTL, unless it was forced or its entry was
    invalidated since the key's previous request (see `_replayed_requests`)."""
    return _served_requests(engine, since, summary(engine, since), max_requests).replay(ttl_hours)


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


def window_start(window: str, now: datetime | None = None) -> datetime | None:
    spans = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
    return None if window == "all" else (now or utcnow()) - spans[window]


@dataclass(frozen=True)
class Overview:
    """Everything the Cache monitoring page shows of a window, read at one moment: what a
    view costs the database (the what-if replays `served` without it)."""

    as_of: datetime
    summary: Summary
    usage: list[GeneratorUsage]
    usage_over_time: list[tuple[datetime, GeneratorUsage]]
    storage: Storage
    requests: list[dict[str, Any]]
    traffic: list[Traffic]
    latency: list[dict[str, Any]]
    entries_written: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    served: ServedRequests
    fit: list[FitReport]


# Queries of one view read at once, each on its own pooled connection: a view costs about
# its slowest query rather than their sum (the pool holds 10 on PostgreSQL).
OVERVIEW_THREADS = 4


def overview(engine: Engine, window: str, granularity: Granularity, now: datetime | None = None) -> Overview:
    """The window's figures, read only: hours not rolled up yet are read from the raw events
    (see `_hourly`), so they are whole whether or not the rollup has run."""
    as_of = now or utcnow()
    since = window_start(window, as_of)
    totals = summary(engine, since)
    figures: dict[str, Callable[[], Any]] = {
        # The TTL replay's read, the slowest, goes first.
        "served": lambda: _served_requests(engine, since, totals, REPLAY_MAX_REQUESTS),
        "usage": lambda: usage_by_generator(engine, since),
        "usage_over_time": lambda: usage_over_time(engine, since, granularity),
        "storage": lambda: storage(engine),
        "requests": lambda: requests_over_time(engine, since, granularity),
        "traffic": lambda: traffic_over_time(engine, since, granularity),
        "latency": lambda: latency_histogram(engine, since),
        "entries_written": lambda: entries_written_over_time(engine, since, granularity),
        "errors": lambda: errors_over_time(engine, since, granularity),
        "fit": lambda: fit_by_generator(engine, since),
    }
    with ThreadPoolExecutor(max_workers=OVERVIEW_THREADS, thread_name_prefix="overview") as pool:
        read = {name: pool.submit(query) for name, query in figures.items()}
        return Overview(as_of=as_of, summary=totals, **{name: future.result() for name, future in read.items()})
