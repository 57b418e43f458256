"""The figures in Prometheus's text format, for the team's own metrics stack (`python -m core
metrics`). Every scrape reads them from the tables (a collector that queries when collected,
not counters kept in one process's memory), so each instance exports the same numbers and a
restart loses none. Requests and tokens come from the hourly rollup and the events of the hours
after it, as monitoring reads them, so they stay whole once the request log is pruned after a
rollup."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine, select

from core.operations import admin, monitoring
from core.operations.fit_report import FitReport, fit_by_generator
from core.operations.monitoring.queries import fetch_rows, int_sum
from core.operations.monitoring.rollup import hours_not_rolled_up, rolled_hours, rolled_up_until
from core.operations.monitoring.usage import USAGE_SUMS, usage_of
from core.operations.rollout import reports
from core.prices import PARTS_BILLED_AS_WHOLE
from core.settings import Settings
from core.store import alert_states
from core.store.entries import expired_entries

PREFIX = "coach_cache"
# A generator identity's labels: its version ('' where events do not say) and its model.
GENERATOR = ("generator", "model")


# A group of requests, and what is summed over it: each figure exported of requests and tokens.
KEY = ("outcome", "miss_reason", "generator_version", "model")
SUMS = (
    *USAGE_SUMS,
    "cache_read_errors",
    "cache_write_errors",
)
Totals = dict[tuple[str, ...], dict[str, int]]


def _sums(engine: Engine, hours: Any) -> Totals:
    """The sums of rollup-shaped rows per group."""
    keys = [hours.c[name] for name in KEY]
    query = select(*keys, *(int_sum(hours.c[name]).label(name) for name in SUMS)).group_by(*keys)
    return {tuple(row[name] for name in KEY): {name: row[name] for name in SUMS} for row in fetch_rows(engine, query)}


def _add(totals: Totals, more: Totals) -> Totals:
    added = {key: dict(sums) for key, sums in totals.items()}
    for key, sums in more.items():
        into = added.setdefault(key, dict.fromkeys(SUMS, 0))
        for name, value in sums.items():
            into[name] += value
    return added


class RequestTotals:
    """Every request so far, per group. A rolled-up hour never changes, so the sums of the
    hours rolled up are read once and kept; each read adds the hours rolled up since and the
    events after them. A scrape then reads a few rows, however long the history: the same
    numbers as summing the whole rollup each time, in every instance."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._rolled: Totals = {}
        self._rolled_until: datetime | None = None

    def read(self) -> list[dict[str, Any]]:
        until = rolled_up_until(self.engine)
        if until is not None and until != self._rolled_until:
            self._rolled = _add(self._rolled, _sums(self.engine, rolled_hours(self._rolled_until, until)))
            self._rolled_until = until
        # From the hour after the last one kept, not after whatever the rollup holds by now:
        # an hour another instance rolls up meanwhile is read from its events, never twice.
        tail = _sums(self.engine, hours_not_rolled_up(self.engine, self._rolled_until))
        return [dict(zip(KEY, key, strict=True)) | sums for key, sums in _add(self._rolled, tail).items()]


# Counting the cache's entries is a scrape's one costly read (every entry of the table): a
# running exporter reads it at most once a minute. Entries and bytes are gauges that move
# slowly; a minute late, they still show a cache filling up or cleanup falling behind.
STORAGE_MAX_AGE_SECONDS = 60.0


class StorageReads:
    """The storage figures, read again once they are STORAGE_MAX_AGE_SECONDS old."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._read: tuple[float, monitoring.Storage] | None = None

    def read(self) -> monitoring.Storage:
        now = time.monotonic()
        if self._read is None or now - self._read[0] >= STORAGE_MAX_AGE_SECONDS:
            self._read = (now, monitoring.storage(self.engine))
        return self._read[1]


@dataclass(frozen=True)
class Figures:
    """Everything a scrape exports, read at one moment."""

    requests: list[dict[str, Any]]
    rollouts: reports.RolloutSpend
    storage: monitoring.Storage
    oldest_expiry: datetime | None
    actions: list[admin.ActionTotals]
    fit: list[FitReport]
    alerts: list[alert_states.State]

    @property
    def usage(self) -> list[monitoring.GeneratorUsage]:
        return usage_of(self.requests)


# Each query on its own pooled connection, as the monitoring page reads a view: a scrape
# costs about its slowest query rather than their sum.
READ_THREADS = 4


def read(engine: Engine, settings: Settings, requests: RequestTotals, storage: StorageReads) -> Figures:
    queries: dict[str, Callable[[], Any]] = {
        # The slowest first: the storage figures count every entry, when they are read.
        "storage": storage.read,
        "requests": requests.read,
        "rollouts": lambda: reports.spend(engine, settings),
        "oldest_expiry": lambda: expired_entries(engine).oldest_expired_at,
        "actions": lambda: admin.action_totals(engine),
        "fit": lambda: fit_by_generator(engine),
        "alerts": lambda: alert_states.read(engine),
    }
    with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="metrics") as pool:
        read = {name: pool.submit(query) for name, query in queries.items()}
        return Figures(**{name: future.result() for name, future in read.items()})


def _counter(name: str, documentation: str, labels: tuple[str, ...]) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=list(labels))


def _gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=list(labels))


def request_families(figures: Figures) -> Iterator[Metric]:
    requests = _counter(
        "requests",
        "Requests by outcome (hit, miss, bypass: a forced refresh, error: nothing served), why a miss"
        " was one ('' for hits and errors, and for hours rolled up before reasons were) and the"
        " generator that served it (a hit: the one that made the entry)",
        ("outcome", "miss_reason", *GENERATOR),
    )
    errors = _counter("cache_errors", "Cache reads and writes that failed (the request went on)", ("operation",))
    read_errors = write_errors = 0
    for row in figures.requests:
        labels = [row["outcome"], row["miss_reason"], row["generator_version"], row["model"]]
        requests.add_metric(labels, row["requests"])
        read_errors += row["cache_read_errors"]
        write_errors += row["cache_write_errors"]
    errors.add_metric(["read"], read_errors)
    errors.add_metric(["write"], write_errors)
    yield requests
    yield errors


def llm_families(figures: Figures, settings: Settings) -> Iterator[Metric]:
    calls = _counter("llm_calls", "Calls billed by an LLM: generations and failed generations", GENERATOR)
    avoided = _counter("llm_calls_avoided", "LLM calls a cache hit made unnecessary", GENERATOR)
    tokens = _counter(
        "llm_tokens",
        "Billed tokens by kind: input not read from the server's prompt cache, cached_input, output"
        " (reasoning included); failed generations included",
        (*GENERATOR, "kind"),
    )
    # Parts billed as their whole is (reasoning: as output), each a counter of its own.
    parts = {name: _counter(f"llm_{name}", about, GENERATOR) for name, about in PARTS_BILLED_AS_WHOLE.items()}
    for usage in figures.usage:
        generator = [usage.generator_version or "", usage.model or ""]
        calls.add_metric(generator, usage.llm_calls)
        avoided.add_metric(generator, usage.llm_calls_avoided)
        for kind, count in usage.billed.by_price().items():
            tokens.add_metric([*generator, kind], count)
        for name, part in parts.items():
            part.add_metric(generator, getattr(usage.billed, name) or 0)
    yield from (calls, avoided, tokens, *parts.values())
    yield _spend(figures, settings)


def _spend(figures: Figures, settings: Settings) -> Metric:
    """What the LLM was billed, as `python -m core stats` counts it: coaches' requests, and
    rollouts' pre-warms and trials, each model at its price in its tier (MODEL_PRICES: a
    changed price changes the total, which Prometheus reads as a counter reset)."""
    spend = _counter(
        "llm_spend_usd",
        "LLM spend in USD at the configured prices, by source (requests, prewarm, trial) and price tier",
        ("source", "tier"),
    )
    rollouts = figures.rollouts
    spend.add_metric(["requests", "live"], monitoring.costs(figures.usage, settings).spent)
    spend.add_metric(["prewarm", "live"], rollouts.live)
    spend.add_metric(["prewarm", "batch"], rollouts.batch)
    spend.add_metric(["trial", "live"], rollouts.trials)
    return spend


def fit_families(figures: Figures) -> Iterator[Metric]:
    refused = _counter(
        "programs_refused",
        "Generations whose every attempt failed validation (nothing cached or saved); read from the"
        " request log, as the fit report is",
        GENERATOR,
    )
    repaired = _counter("programs_repaired", "Generations that passed validation only after a repair", GENERATOR)
    for report in figures.fit:
        generator = [report.generator_version, report.model or ""]
        refused.add_metric(generator, report.refused)
        repaired.add_metric(generator, report.repaired)
    yield refused
    yield repaired


def storage_families(figures: Figures) -> Iterator[Metric]:
    store = figures.storage
    entries = _gauge(
        "entries", "Program entries in the cache, valid or expired (not cleaned up yet), read once a minute", ("state",)
    )
    entry_bytes = _gauge("entry_bytes", "Bytes of the programs stored in the cache's entries", ("state",))
    for state, count, size in (
        ("valid", store.valid_entries, store.valid_bytes),
        ("expired", store.expired_entries, store.expired_bytes),
    ):
        entries.add_metric([state], count)
        entry_bytes.add_metric([state], size)
    yield entries
    yield entry_bytes
    table = _gauge(
        "storage_bytes",
        "The cache table's size: on PostgreSQL the relation's (indexes included), on SQLite the entries'",
    )
    table.add_metric([], store.table_bytes)
    yield table
    if figures.oldest_expiry is not None:  # absent while no entry has expired
        oldest = _gauge(
            "oldest_expired_entry_timestamp_seconds", "When the entry that expired longest ago expired (Unix time)"
        )
        oldest.add_metric([], figures.oldest_expiry.timestamp())
        yield oldest


def action_families(figures: Figures) -> Iterator[Metric]:
    runs = _counter("admin_actions", "Runs of cleanup, user invalidation and generator retirement", ("action",))
    deleted = _counter("deleted_entries", "Cache entries deleted by cleanup and invalidations", ("action",))
    last = _gauge("last_admin_action_timestamp_seconds", "When each action last ran (Unix time)", ("action",))
    for totals in figures.actions:
        runs.add_metric([totals.action], totals.runs)
        deleted.add_metric([totals.action], totals.deleted)
        last.add_metric([totals.action], totals.last_at.timestamp())
    yield from (runs, deleted, last)


def alert_families(figures: Figures) -> Iterator[Metric]:
    """Each alert rule as the last `alerts check` recorded it (alert_states): 1 while it fires."""
    firing = _gauge("alert_firing", "Whether the alert rule fired at the last `alerts check`", ("rule",))
    for state in figures.alerts:
        firing.add_metric([state.rule], 1.0 if state.firing else 0.0)
    yield firing


class CacheCollector:
    """Reads the figures when scraped."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        # Scrapes come one at a time (the exporter serves one request at a time).
        self.requests = RequestTotals(engine)
        self.storage = StorageReads(engine)

    def collect(self) -> Iterator[Metric]:
        figures = read(self.engine, self.settings, self.requests, self.storage)
        yield from request_families(figures)
        yield from llm_families(figures, self.settings)
        yield from fit_families(figures)
        yield from storage_families(figures)
        yield from action_families(figures)
        yield from alert_families(figures)


def registry(engine: Engine, settings: Settings) -> CollectorRegistry:
    """A registry of the cache's figures alone (not this process's own, which differ per instance)."""
    cache = CollectorRegistry(auto_describe=False)
    cache.register(CacheCollector(engine, settings))
    return cache


def exposition(engine: Engine, settings: Settings) -> bytes:
    """One scrape's text, as served."""
    return generate_latest(registry(engine, settings))
