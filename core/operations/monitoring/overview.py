"""Everything the Cache monitoring page shows for a window, queried at once."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
)

from core.operations.fit_report import FitReport, fit_by_generator
from core.operations.monitoring.figures import (
    Storage,
    Summary,
    Traffic,
    entries_written_over_time,
    errors_over_time,
    latency_histogram,
    requests_over_time,
    storage,
    summary,
    traffic_over_time,
)
from core.operations.monitoring.queries import Granularity
from core.operations.monitoring.replay import REPLAY_MAX_REQUESTS, ServedRequests, served_requests
from core.operations.monitoring.usage import GeneratorUsage, usage_by_generator, usage_over_time
from core.store.schema import (
    utcnow,
)


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
    (see `hourly`), so they are whole whether or not the rollup has run."""
    as_of = now or utcnow()
    since = window_start(window, as_of)
    totals = summary(engine, since)
    figures: dict[str, Callable[[], Any]] = {
        # The TTL replay's read, the slowest, goes first.
        "served": lambda: served_requests(engine, since, totals, REPLAY_MAX_REQUESTS),
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
