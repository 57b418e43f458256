"""`python -m bench`: the cache's costs side by side with the database's own floor, on SQLite
and PostgreSQL, at the table sizes the targets name."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bench.measure import PeakMemory, floor, recorded_statements, round_trips, summarize, time_calls
from bench.workload import seed_cache, seed_events, seed_programs
from core.contract.cache_key import cache_key
from core.contract.models import parse_onboarding
from core.generators import OfflineGenerator
from core.operations import admin, monitoring
from core.serving.service import ProgramService
from core.serving.validated import ValidatedPrograms
from core.store import history
from core.store.db import is_postgres, make_engine, migrate
from core.store.history import HistoryFilter
from testkit.counting import CountingGenerator

PROFILE = {
    "goal": "hypertrophy",
    "experience_level": "intermediate",
    "days_per_week": 4,
    "session_minutes": 60,
    "equipment": ["barbell", "dumbbells", "machines"],
    "age": 34,
    "injuries": "left shoulder: no overhead pressing",
}
RESULTS = Path(__file__).parent / "results.json"


def fresh_profile(i: int) -> dict[str, Any]:
    return {**PROFILE, "notes": f"bench profile {i} {time.time_ns()}"}


def reset(engine: Engine) -> None:
    tables = (
        "program_rejections, ai_coach_cache, training_programs, generation_events, admin_actions, generation_leases"
    )
    with engine.begin() as connection:
        if is_postgres(engine):
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
        else:
            for table in tables.split(", "):
                connection.execute(text(f"DELETE FROM {table}"))


def timed(label: str, call: Callable[[], Any], log: Callable[[str], None]) -> float:
    started = time.perf_counter()
    call()
    seconds = time.perf_counter() - started
    log(f"  {label}: {seconds:.1f} s")
    return seconds


def hit_path(engine: Engine, sizes: dict[str, int], reps: int, log: Callable[[str], None]) -> dict[str, Any]:
    timed(f"seed {sizes['cache']:,} valid entries", lambda: seed_cache(engine, sizes["cache"], expired=False), log)
    service = ProgramService(engine=engine, generator=OfflineGenerator())
    call = lambda: service.generate(user_id="bench-user", onboarding_responses=PROFILE, has_paid_access=True)  # noqa: E731
    assert not call().cache_hit
    hit = time_calls(call, reps, warmup=100)
    with recorded_statements(engine) as statements:
        assert call().cache_hit
    db_floor = floor(engine, statements, reps)
    # The same with nothing remembered: every hit fetches the program and validates it.
    service.validated = ValidatedPrograms(max_bytes=0)
    revalidating = time_calls(call, reps, warmup=100)
    with recorded_statements(engine) as statements_revalidating:
        assert call().cache_hit
    revalidating_floor = floor(engine, statements_revalidating, reps)
    profile = parse_onboarding(PROFILE)
    key = time_calls(lambda: cache_key("bench-user", parse_onboarding(PROFILE), True), reps * 5)
    key_only = time_calls(lambda: cache_key("bench-user", profile, True), reps * 5)
    return {
        "hit_path": hit,
        "floor": db_floor,
        "statements_per_hit": [s.statement.split()[0] + (" (autocommit)" if s.autocommit else "") for s in statements],
        "round_trips_per_hit": round_trips(statements) if is_postgres(engine) else None,
        "hit_over_floor_ratio": round(hit["p50_ms"] / db_floor["p50_ms"], 3),
        "hit_path_revalidating": revalidating,
        "floor_revalidating": revalidating_floor,
        "revalidating_over_floor_ratio": round(revalidating["p50_ms"] / revalidating_floor["p50_ms"], 3),
        "key_with_validation": key,
        "key_computation": key_only,
    }


def miss_path(engine: Engine, generator_seconds: float, reps: int) -> dict[str, Any]:
    generator = CountingGenerator(generator_seconds)
    service = ProgramService(engine=engine, generator=generator)
    overheads = []
    for i in range(reps):
        result = service.generate(user_id=f"miss-{i}", onboarding_responses=fresh_profile(i), has_paid_access=True)
        assert not result.cache_hit
        overheads.append(result.latency_ms - generator_seconds * 1000)
    return {"generator_seconds": generator_seconds, "overhead": summarize(overheads)}


def single_flight_threads(engine: Engine, generator_seconds: float, requests: int = 20) -> dict[str, Any]:
    generator = CountingGenerator(generator_seconds)
    service = ProgramService(engine=engine, generator=generator, lock_wait_seconds=60)
    profile = fresh_profile(-1)
    barrier = threading.Barrier(requests)
    done: list[float] = []

    def request() -> None:
        barrier.wait()
        service.generate(user_id="herd", onboarding_responses=profile, has_paid_access=False)
        done.append(time.perf_counter())

    with PeakMemory() as memory:
        started = time.perf_counter()
        threads = [threading.Thread(target=request) for _ in range(requests)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return {
        "requests": requests,
        "llm_calls": generator.calls,
        "last_served_after_s": round(max(done) - started, 3),
        "memory_baseline_mb": round(memory.baseline_mb, 1),
        "memory_peak_mb": round(memory.peak_mb, 1),
    }


def _process_request(url: str, profile: dict[str, Any], seconds: float, start: Any, calls: Any) -> None:
    engine = make_engine(url)
    generator = CountingGenerator(seconds)
    service = ProgramService(engine=engine, generator=generator, lock_wait_seconds=60)
    start.wait()
    service.generate(user_id="herd-processes", onboarding_responses=profile, has_paid_access=False)
    calls.put(generator.calls)
    engine.dispose()


def single_flight_processes(url: str, generator_seconds: float, processes: int = 4) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    start, calls = context.Barrier(processes), context.Queue()
    profile = fresh_profile(-2)
    workers = [
        context.Process(target=_process_request, args=(url, profile, generator_seconds, start, calls))
        for _ in range(processes)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return {"processes": processes, "llm_calls": sum(calls.get(timeout=5) for _ in workers)}


def monitoring_queries(engine: Engine, reps: int) -> dict[str, Any]:
    since = datetime.now(UTC) - timedelta(days=30)
    what_if = [*monitoring.WHAT_IF_TTLS, 12.0]  # and the page's default custom TTL
    # Each query of a view, apart; the TTL replay here reads its requests and replays them.
    queries: dict[str, Callable[[], Any]] = {
        "summary": lambda: monitoring.summary(engine, since),
        "usage_by_generator": lambda: monitoring.usage_by_generator(engine, since),
        "usage_over_time": lambda: monitoring.usage_over_time(engine, since, "day"),
        "storage": lambda: monitoring.storage(engine),
        "requests_over_time": lambda: monitoring.requests_over_time(engine, since, "day"),
        "traffic_over_time": lambda: monitoring.traffic_over_time(engine, since, "day"),
        "errors_over_time": lambda: monitoring.errors_over_time(engine, since, "day"),
        "latency_histogram": lambda: monitoring.latency_histogram(engine, since),
        "entries_written_over_time": lambda: monitoring.entries_written_over_time(engine, since, "day"),
        "ttl_replay": lambda: monitoring.replay_ttls(engine, what_if, since),
    }
    results: dict[str, Any] = {name: time_calls(query, reps, warmup=1) for name, query in queries.items()}
    # A view as the page runs it when its figures are not cached: one overview, and the
    # what-if's replay of the requests it read.
    results["page_view"] = time_calls(
        lambda: monitoring.overview(engine, "30d", "day").served.replay(what_if), reps, warmup=1
    )
    results["page_total_p50_ms"] = results["page_view"]["p50_ms"]
    # The Refresh button and cron, not a view: nothing new has settled here, so its floor.
    results["refresh_rollup"] = time_calls(lambda: monitoring.refresh_rollup(engine), reps, warmup=1)
    return results


def history_queries(engine: Engine, reps: int) -> dict[str, Any]:
    page = history.list_programs(engine, HistoryFilter())
    deep = page
    for _ in range(20):  # page 21, by keyset
        deep = history.list_programs(engine, HistoryFilter(), after=deep.next_cursor)
    since = datetime.now(UTC) - timedelta(days=7)
    return {
        "first_page": time_calls(lambda: history.list_programs(engine, HistoryFilter()), reps, warmup=2),
        "page_21": time_calls(lambda: history.list_programs(engine, HistoryFilter(), after=deep.next_cursor), reps),
        "user_and_source": time_calls(
            lambda: history.list_programs(engine, HistoryFilter(user_id="u4242", source="cache")), reps
        ),
        "last_7_days_llm": time_calls(
            lambda: history.list_programs(engine, HistoryFilter(since=since, source="llm")), reps
        ),
    }


def cleanup_under_load(engine: Engine, expired: int, log: Callable[[str], None]) -> dict[str, Any]:
    timed(f"seed {expired:,} expired entries", lambda: seed_cache(engine, expired, expired=True, prefix="old"), log)
    service = ProgramService(engine=engine, generator=OfflineGenerator())
    call = lambda: service.generate(user_id="bench-user", onboarding_responses=PROFILE, has_paid_access=True)  # noqa: E731
    call()
    samples: list[float] = []
    running = threading.Event()
    running.set()

    def serve() -> None:
        while running.is_set():
            started = time.perf_counter()
            assert call().cache_hit
            samples.append((time.perf_counter() - started) * 1000)

    reader = threading.Thread(target=serve)
    reader.start()
    started = time.perf_counter()
    removal = admin.delete_expired_entries(engine, actor="bench")
    seconds = time.perf_counter() - started
    running.clear()
    reader.join()
    return {"deleted": removal.deleted, "seconds": round(seconds, 2), "hits_meanwhile": summarize(samples)}


def run_database(label: str, url: str, quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    sizes = {"cache": 10_000, "rows": 100_000} if quick else {"cache": 100_000, "rows": 1_000_000}
    reps = 300 if quick else 2_000
    generator_seconds = 0.5 if quick else 2.0
    engine = make_engine(url)
    migrate(engine)
    reset(engine)
    log(f"{label}:")
    out: dict[str, Any] = {"sizes": sizes}
    out.update(hit_path(engine, sizes, reps, log))
    out["miss_path"] = miss_path(engine, generator_seconds, 3 if quick else 5)
    out["single_flight_threads"] = single_flight_threads(engine, generator_seconds)
    if is_postgres(engine):
        out["single_flight_processes"] = single_flight_processes(url, generator_seconds)
    timed(f"seed {sizes['rows']:,} events", lambda: seed_events(engine, sizes["rows"]), log)
    timed(f"seed {sizes['rows']:,} history rows", lambda: seed_programs(engine, sizes["rows"]), log)
    out["rollup_first_refresh_s"] = round(
        timed("roll up the seeded events", lambda: monitoring.refresh_rollup(engine), log), 2
    )
    with PeakMemory() as memory:
        out["monitoring"] = monitoring_queries(engine, 3 if quick else 5)
        out["history"] = history_queries(engine, 20 if quick else 50)
    out["monitoring_and_history_memory_mb"] = {
        "baseline": round(memory.baseline_mb, 1),
        "peak": round(memory.peak_mb, 1),
    }
    out["cleanup"] = cleanup_under_load(engine, sizes["rows"], log)
    engine.dispose()
    return out


def row(name: str, figure: dict[str, Any] | None) -> str:
    if not figure:
        return f"{name:<44} {'-':>12} {'-':>12}"
    return f"{name:<44} {figure['p50_ms']:>12.3f} {figure['p95_ms']:>12.3f}"


def table(results: dict[str, Any]) -> str:
    lines = []
    for label, r in results["databases"].items():
        lines.append(f"\n{label} ({r['sizes']['cache']:,} cache entries, {r['sizes']['rows']:,} rows)")
        lines.append(f"{'figure (ms)':<44} {'p50':>12} {'p95':>12}")
        lines.append(row("hit path (service)", r["hit_path"]))
        lines.append(row("floor (same statements, bare driver)", r["floor"]))
        lines.append(f"{'hit / floor (p50)':<44} {r['hit_over_floor_ratio']:>12.2f}")
        lines.append(row("hit path, revalidating every hit", r["hit_path_revalidating"]))
        lines.append(row("floor of that", r["floor_revalidating"]))
        lines.append(f"{'revalidating hit / floor (p50)':<44} {r['revalidating_over_floor_ratio']:>12.2f}")
        lines.append(row("key computation (validated profile)", r["key_computation"]))
        lines.append(row("key computation with profile validation", r["key_with_validation"]))
        lines.append(
            row(f"miss overhead above a {r['miss_path']['generator_seconds']} s generator", r["miss_path"]["overhead"])
        )
        sf = r["single_flight_threads"]
        served = f"(last served after {sf['last_served_after_s']} s)"
        lines.append(f"{'single-flight, 20 threads: LLM calls':<44} {sf['llm_calls']:>12} {served}")
        if "single_flight_processes" in r:
            lines.append(
                f"{'single-flight, 4 processes: LLM calls':<44} {r['single_flight_processes']['llm_calls']:>12}"
            )
        lines.append(
            f"{'memory during single-flight (MB)':<44} {sf['memory_baseline_mb']:>12} {sf['memory_peak_mb']:>12}"
        )
        for name, figure in r["monitoring"].items():
            if isinstance(figure, dict):
                lines.append(row(f"monitoring: {name}", figure))
        lines.append(f"{'monitoring page, a view not cached (p50)':<44} {r['monitoring']['page_total_p50_ms']:>12.1f}")
        for name, figure in r["history"].items():
            lines.append(row(f"history: {name}", figure))
        mem = r["monitoring_and_history_memory_mb"]
        lines.append(f"{'memory during monitoring+history (MB)':<44} {mem['baseline']:>12} {mem['peak']:>12}")
        c = r["cleanup"]
        lines.append(f"{'cleanup: entries deleted, seconds':<44} {c['deleted']:>12,} {c['seconds']:>12}")
        lines.append(row("hits during cleanup", c["hits_meanwhile"]) + f" max {c['hits_meanwhile']['max_ms']:.1f}")
    return "\n".join(lines)


def _add_to_results(out: Path, name: str, measured: dict[str, Any]) -> None:
    """One mode's figures under their own key, beside what the other modes wrote."""
    earlier = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({**earlier, name: measured}, indent=2) + "\n")
    print(f"written to {out} (key '{name}')")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10x smaller tables, fewer repetitions: under a minute")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL"),
        help="PostgreSQL to measure (its tables are emptied); default: a throwaway cluster",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--browser",
        action="store_true",
        help="only the coach's wait in Chromium: click to 'Cache hit' badge, and to a streamed miss's first session",
    )
    parser.add_argument(
        "--concurrency",
        action="store_true",
        help="only hits under load (4 processes x 8 threads), directly and through PgBouncer, beside the floor",
    )
    parser.add_argument(
        "--real-llm",
        action="store_true",
        help="only generations from a real model (llama.cpp's server, SmolLM2-135M) over 12 small profiles",
    )
    parser.add_argument(
        "--rollout",
        action="store_true",
        help="only three replayed days of requests across a model switch, with and without a pre-warm",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="only a Prometheus scrape of `python -m core metrics` at 1 M events, with and without the rollup",
    )
    parser.add_argument("--users", type=int, help="--rollout: how many users' requests to replay")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    log = lambda message: print(message, flush=True)  # noqa: E731

    if args.real_llm:
        from bench import real_llm

        result = real_llm.measure(log)
        print(real_llm.table(result))
        _add_to_results(args.out, "real_llm", result)
        return 0

    if args.metrics:
        from bench import metrics_scrape

        result = metrics_scrape.measure(args.quick, not args.skip_postgres, log)
        print(metrics_scrape.table(result))
        _add_to_results(args.out, "metrics", result)
        return 0

    if args.rollout:
        from bench import replay

        result = replay.measure(args.users or replay.USERS, log, postgres=not args.skip_postgres)
        print(replay.table(result))
        _add_to_results(args.out, "rollout", result)
        return 0

    if args.browser or args.concurrency:
        from bench import browser, concurrency

        name = "browser" if args.browser else "concurrency"
        measured = (
            browser.measure(20 if args.quick else 100, log) if args.browser else concurrency.measure(args.quick, log)
        )
        _add_to_results(args.out, name, measured)
        return 0

    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "databases": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        results["databases"]["sqlite"] = run_database("sqlite", f"sqlite:///{folder}/bench.db", args.quick, log)
    if not args.skip_postgres:
        server = None
        url = args.database_url
        if not url:
            from testkit.pg_server import PostgresServer

            server = PostgresServer().start()
            server.wait_ready()
            server.admin("CREATE DATABASE bench")
            url = server.url("bench")
        try:
            results["databases"]["postgresql"] = run_database("postgresql", url, args.quick, log)
        finally:
            if server:
                server.stop()
        pg = results["databases"]["postgresql"]
        results["hit_over_floor_ratio"] = pg["hit_over_floor_ratio"]
        results["single_flight_llm_calls"] = max(
            pg["single_flight_threads"]["llm_calls"], pg["single_flight_processes"]["llm_calls"]
        )
    print(table(results))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0
