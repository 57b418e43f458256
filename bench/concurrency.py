"""`python -m bench --concurrency`: cache hits under load on PostgreSQL, directly and through
PgBouncer in transaction pooling mode, each beside the floor: one statement through the bare
driver (psycopg 3) that reads the entry, inserts the history row and returns the program.

- concurrent: PROCESSES processes x THREADS threads of coaches, each asking for its own
  cached program again and again, the service and the floor in alternated runs of a fixed
  time; hits per second and latency percentiles.
- single hit: one coach, the service's hit and the floor's statement alternated so that
  both see the same machine; p50s, their ratio, and the round trips a hit makes."""

from __future__ import annotations

import functools
import json
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from bench.measure import recorded_statements, round_trips, summarize
from core.contract.models import parse_onboarding
from core.generators import OfflineGenerator
from core.serving.service import ProgramService
from core.store.db import make_engine, migrate

PROCESSES, THREADS = 4, 8
ROUNDS = 2  # alternated runs of the service and the floor, each half the time
PROFILE = {
    "goal": "hypertrophy",
    "experience_level": "advanced",
    "days_per_week": 6,
    "session_minutes": 90,
    "equipment": ["barbell", "dumbbells", "machines", "kettlebells", "pull_up_bar"],
    "age": 34,
    "injuries": "left shoulder: no overhead pressing",
}
# The answers as a history row stores them (normalized, JSON).
ANSWERS = json.dumps(parse_onboarding(PROFILE).normalized())
# The floor: everything a hit must do, in one statement the bare driver sends.
FLOOR_STATEMENT = """
WITH entry AS (
    SELECT data FROM ai_coach_cache WHERE cache_key = %(key)s AND expires_at > now()
), saved AS (
    INSERT INTO training_programs
        (user_id, program, onboarding_responses, has_paid_access, source, cache_key, created_at, latency_ms)
    SELECT %(user_id)s, data, %(answers)s::jsonb, true, 'cache', %(key)s, now(), 0 FROM entry
    RETURNING id
)
SELECT entry.data::text, saved.id FROM entry, saved
"""


def user_of(process: int, thread: int) -> str:
    return f"coach-{process}-{thread}"


def seed(engine: Engine, users: list[str]) -> dict[str, str]:
    """A valid entry per user, written by a real miss; their keys."""
    service = ProgramService(engine=engine, generator=OfflineGenerator())
    return {
        user: service.generate(user_id=user, onboarding_responses=PROFILE, has_paid_access=True).cache_key
        for user in users
    }


def _connect_bare(url: str) -> psycopg.Connection[Any]:
    parts = make_url(url)
    # No server-side prepared statements, as the app: a transaction pooler cannot keep them.
    return psycopg.connect(
        host=parts.host,
        port=parts.port,
        user=parts.username,
        dbname=parts.database,
        autocommit=True,
        prepare_threshold=None,
    )


def _floor_call(connection: psycopg.Connection[Any], user: str, key: str) -> Callable[[], Any]:
    params = {"key": key, "user_id": user, "answers": ANSWERS}

    def call() -> Any:
        row = connection.execute(FLOOR_STATEMENT, params).fetchone()
        assert row is not None, "the floor found no valid entry"
        return row

    return call


def _process(kind: str, url: str, index: int, keys: dict[str, str], seconds: float, start: Any, out: Any) -> None:
    engine = make_engine(url)
    service = ProgramService(engine=engine, generator=OfflineGenerator())
    calls: list[Callable[[], Any]] = []
    connections: list[psycopg.Connection[Any]] = []
    for thread in range(THREADS):
        user = user_of(index, thread)
        if kind == "floor":
            connections.append(_connect_bare(url))
            calls.append(_floor_call(connections[-1], user, keys[user]))
        else:
            calls.append(
                functools.partial(service.generate, user_id=user, onboarding_responses=PROFILE, has_paid_access=True)
            )
    for call in calls:  # warm: connections open, entries validated
        call()
    latencies: list[list[float]] = [[] for _ in calls]
    start.wait()
    deadline = time.perf_counter() + seconds

    def coach(call: Callable[[], Any], samples: list[float]) -> None:
        while (now := time.perf_counter()) < deadline:
            call()
            samples.append((time.perf_counter() - now) * 1000)

    threads = [threading.Thread(target=coach, args=pair) for pair in zip(calls, latencies, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for connection in connections:
        connection.close()
    engine.dispose()
    out.put([sample for samples in latencies for sample in samples])


def _run(kind: str, url: str, keys: dict[str, str], seconds: float) -> list[float]:
    """One timed run of PROCESSES x THREADS coaches; every request's latency."""
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(PROCESSES), context.Queue()
    workers = [
        context.Process(target=_process, args=(kind, url, index, keys, seconds, start, out))
        for index in range(PROCESSES)
    ]
    for w in workers:
        w.start()
    samples = [s for _ in workers for s in out.get(timeout=seconds + 120)]
    for w in workers:
        w.join(30)
    return samples


def _summary(samples: list[float], seconds: float) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "throughput_per_s": round(len(samples) / seconds, 1),
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[int(len(ordered) * 0.99)], 3),
        "n": len(samples),
    }


def concurrent(url: str, keys: dict[str, str], seconds: float) -> dict[str, dict[str, Any]]:
    """The service and the floor, each for `seconds` in all, in ROUNDS alternated runs: the
    speed of this shared machine drifts by tens of percent within a minute, and alternating
    lets the drift hit both alike."""
    samples: dict[str, list[float]] = {"service": [], "floor": []}
    for _ in range(ROUNDS):
        for kind, kept in samples.items():
            kept.extend(_run(kind, url, keys, seconds / ROUNDS))
    return {kind: _summary(kept, seconds) for kind, kept in samples.items()}


def single_hit(url: str, keys: dict[str, str], repetitions: int) -> dict[str, Any]:
    engine = make_engine(url)
    service = ProgramService(engine=engine, generator=OfflineGenerator())
    user = user_of(0, 0)
    hit = lambda: service.generate(user_id=user, onboarding_responses=PROFILE, has_paid_access=True)  # noqa: E731
    connection = _connect_bare(url)
    floor = _floor_call(connection, user, keys[user])
    hits: list[float] = []
    floors: list[float] = []
    for _ in range(50):
        hit(), floor()
    with recorded_statements(engine) as statements:
        assert hit().cache_hit
    for _ in range(repetitions):  # alternated, so drift in the machine hits both alike
        for call, samples in ((hit, hits), (floor, floors)):
            started = time.perf_counter()
            call()
            samples.append((time.perf_counter() - started) * 1000)
    program_bytes = len(floor()[0].encode())
    connection.close()
    engine.dispose()
    hit_summary, floor_summary = summarize(hits), summarize(floors)
    return {
        "program_bytes": program_bytes,
        "hit": hit_summary,
        "floor_one_statement": floor_summary,
        "hit_over_floor_ratio": round(hit_summary["p50_ms"] / floor_summary["p50_ms"], 3),
        "statements_per_hit": len(statements),
        "round_trips_per_hit": round_trips(statements),
    }


def measure(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from testkit.pg_server import PostgresServer
    from testkit.pgbouncer import PgBouncer

    seconds = 3.0 if quick else 10.0
    repetitions = 300 if quick else 2_000
    server = PostgresServer().start()
    server.wait_ready()
    pooler = None
    try:
        server.admin("CREATE DATABASE bench")
        direct = server.url("bench")
        engine = make_engine(direct)
        migrate(engine)
        keys = seed(engine, [user_of(p, t) for p in range(PROCESSES) for t in range(THREADS)])
        with engine.connect() as connection:
            size = connection.execute(text("SELECT max(size_bytes) FROM ai_coach_cache")).scalar_one()
        engine.dispose()
        log(f"{len(keys)} coaches, each with a cached program of {size:,} bytes")
        pooler = PgBouncer(server, pool_size=PROCESSES * THREADS).start()
        results: dict[str, Any] = {
            "processes": PROCESSES,
            "threads_per_process": THREADS,
            "seconds_per_run": seconds,
        }
        for label, url in (("direct", direct), ("pgbouncer", pooler.url("bench"))):
            log(f"{label}: single hit beside the floor ({repetitions} each)")
            single = single_hit(url, keys, repetitions)
            log(
                f"{label}: {PROCESSES} processes x {THREADS} threads, {seconds:g} s each for the service and the floor,"
                f" in {ROUNDS} alternated runs"
            )
            runs = concurrent(url, keys, seconds)
            service, floor = runs["service"], runs["floor"]
            results[label] = {
                "hit_throughput_per_s": service["throughput_per_s"],
                "hit_p50_ms": service["p50_ms"],
                "hit_p99_ms": service["p99_ms"],
                "floor_throughput_per_s": floor["throughput_per_s"],
                "floor_p50_ms": floor["p50_ms"],
                "floor_p99_ms": floor["p99_ms"],
                "throughput_over_floor": round(service["throughput_per_s"] / floor["throughput_per_s"], 3),
                "single_hit": single,
            }
            log(
                f"  hits {service['throughput_per_s']:,.0f}/s (p50 {service['p50_ms']} ms, p99 {service['p99_ms']} ms)"
                f" vs floor {floor['throughput_per_s']:,.0f}/s; single hit {single['hit']['p50_ms']} ms vs "
                f"{single['floor_one_statement']['p50_ms']} ms ({single['hit_over_floor_ratio']}x), "
                f"{single['round_trips_per_hit']} round trips"
            )
        return results
    finally:
        if pooler is not None:
            pooler.stop()
        server.stop()
