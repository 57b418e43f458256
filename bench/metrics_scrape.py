"""`python -m bench --metrics`: what one Prometheus scrape of `python -m core metrics` costs at
1 M requests and 100 000 cache entries (a tenth of them expired), on SQLite and PostgreSQL: with
the hourly rollup, as cron keeps it (a running exporter's scrape, and the first after a start),
and before any rollup (every request read raw)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import generate_latest
from sqlalchemy import Engine, func, select

from bench.measure import time_calls
from bench.workload import seed_cache, seed_events
from core.operations import metrics, monitoring
from core.settings import Settings
from core.store.db import make_engine, migrate
from core.store.schema import generation_stats_hourly

# issue 33: a scrape at 1 M events on PostgreSQL takes at most this long.
TARGET_MS = 100.0


def _seed(engine: Engine, sizes: dict[str, int], log: Callable[[str], None]) -> None:
    started = time.perf_counter()
    expired = sizes["cache"] // 10
    seed_cache(engine, sizes["cache"] - expired, expired=False)
    seed_cache(engine, expired, expired=True, prefix="old")
    seed_events(engine, sizes["rows"])
    log(f"  seeded {sizes['cache']:,} entries and {sizes['rows']:,} events in {time.perf_counter() - started:.1f} s")


def scrape_costs(url: str, sizes: dict[str, int], reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    engine = make_engine(url)
    migrate(engine)
    _seed(engine, sizes, log)
    settings = Settings()
    # A scrape of a new exporter (a restart) sums every rolled-up hour; the next ones only the
    # hours since, and the events after them.
    first = lambda: metrics.exposition(engine, settings)  # noqa: E731
    raw = time_calls(first, 1, warmup=0)
    monitoring.refresh_rollup(engine)
    after_start = time_calls(first, 3, warmup=0)
    serving = metrics.registry(engine, settings)
    rolled = time_calls(lambda: generate_latest(serving), reps, warmup=1)
    with engine.connect() as connection:
        rows = connection.execute(select(func.count()).select_from(generation_stats_hourly)).scalar_one()
    engine.dispose()
    log(
        f"  scrape p50 {rolled['p50_ms']:.1f} ms, the first after a start {after_start['p50_ms']:.1f} ms"
        f" ({rows:,} rollup rows), before any rollup {raw['p50_ms']:.1f} ms"
    )
    return {
        "sizes": sizes,
        "rollup_rows": rows,
        "scrape": rolled,
        "first_scrape_after_start": after_start,
        "scrape_before_any_rollup": raw,
    }


def measure(quick: bool, postgres: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from testkit.pg_server import PostgresServer

    sizes = {"cache": 10_000, "rows": 100_000} if quick else {"cache": 100_000, "rows": 1_000_000}
    reps = 10 if quick else 30
    results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "databases": {}}
    with tempfile.TemporaryDirectory() as folder:
        log("sqlite:")
        results["databases"]["sqlite"] = scrape_costs(f"sqlite:///{folder}/bench.db", sizes, reps, log)
    if postgres:
        server = PostgresServer().start()
        try:
            server.wait_ready()
            server.admin("CREATE DATABASE bench")
            log("postgresql:")
            results["databases"]["postgresql"] = scrape_costs(server.url("bench"), sizes, reps, log)
        finally:
            server.stop()
    return results


def table(results: dict[str, Any]) -> str:
    lines = [f"\n{'metrics scrape (ms)':<44} {'p50':>12} {'p95':>12}"]
    for label, r in results["databases"].items():
        for name in ("scrape", "first_scrape_after_start", "scrape_before_any_rollup"):
            figure = r[name]
            lines.append(f"{label + ': ' + name:<44} {figure['p50_ms']:>12.1f} {figure['p95_ms']:>12.1f}")
    lines.append(f"target on PostgreSQL at 1 M events: {TARGET_MS:g} ms")
    return "\n".join(lines)
