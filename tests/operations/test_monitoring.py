"""Monitoring numbers: the same from raw events and from the hourly rollup, and the TTL replay."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from core.contract.cache_key import DIGEST_ALPHABET
from core.operations import admin, monitoring
from core.prices import NOT_BILLED, Billed
from core.serving.service import ProgramService
from core.settings import Settings
from core.store.db import make_engine, migrate
from core.store.history import GenerationEvent, insert_event
from core.store.schema import generation_events, generation_stats_hourly, utcnow
from testkit.counting import CountingGenerator
from tests.conftest import CliRun
from tests.helpers import PROFILE


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('replay')}/coach.db")
    migrate(engine)
    yield engine
    engine.dispose()


def seed(engine: Engine) -> None:
    now = utcnow()
    plan = [
        # (hours ago, outcome, latency ms, read error, write error)
        (50, "miss", 8000.0, False, False),
        (49.5, "hit", 3.0, False, False),
        (49.2, "hit", 1.5, False, False),
        (30, "bypass", 9000.0, False, True),
        (26, "error", 60000.0, True, False),
        (5, "hit", 0.8, False, False),
        (0.2, "miss", 7000.0, False, False),  # not settled: stays raw
        (0.1, "hit", 2.5, True, False),
    ]
    with engine.begin() as connection:
        for hours, outcome, latency, read_error, write_error in plan:
            llm = outcome in ("miss", "bypass")
            insert_event(
                connection,
                GenerationEvent(
                    user_id="u",
                    cache_key="program:uu:paidfalse:dk",
                    outcome=outcome,
                    latency_ms=latency,
                    billed=Billed(prompt_tokens=400, completion_tokens=1000) if llm else NOT_BILLED,
                    cache_read_error=read_error,
                    cache_write_error=write_error,
                    created_at=now - timedelta(hours=hours),
                ),
            )


def snapshot(engine: Engine) -> tuple:
    since = utcnow() - timedelta(days=7)
    return (
        monitoring.summary(engine, since),
        monitoring.requests_over_time(engine, since, "day"),
        monitoring.requests_over_time(engine, since, "hour"),
        monitoring.errors_over_time(engine, since, "day"),
        sorted(monitoring.latency_histogram(engine, since), key=lambda r: (str(r["upper_ms"]), r["outcome"])),
    )


def test_rollup_gives_the_numbers_raw_events_give(engine: Engine) -> None:
    seed(engine)
    raw = snapshot(engine)
    monitoring.refresh_rollup(engine)
    monitoring.refresh_rollup(engine)  # nothing new has settled: a no-op
    assert snapshot(engine) == raw

    with engine.connect() as connection:
        rolled = connection.execute(select(func.count(), func.sum(generation_stats_hourly.c.requests))).one()
    # Everything but the last hour's two requests is in the rollup, once.
    assert tuple(rolled) == (6, 6)
    assert "miss" in {r["outcome"] for r in raw[1]}
    summary = raw[0]
    assert (summary.requests, summary.hits, summary.misses, summary.bypasses, summary.errors) == (8, 4, 2, 1, 1)
    assert (summary.cache_read_errors, summary.cache_write_errors, summary.generations) == (2, 1, 3)
    assert summary.hit_rate == 4 / 7
    assert summary.avg_hit_ms == (3.0 + 1.5 + 0.8 + 2.5) / 4


def test_a_bounded_rollup_catches_up_in_steps_across_gaps_and_numbers_never_change(engine: Engine) -> None:
    seed(engine)  # settled events 50, 49.5, 49.2, 30, 26 and 5 hours ago: gaps of up to 21 hours
    raw = snapshot(engine)
    reached = []
    for _ in range(5):
        reached.append(monitoring.refresh_rollup(engine, max_hours=2))
        assert snapshot(engine) == raw  # rolled up or raw, the numbers are the same
    # Two hours a step, counted from the next event: five steps reach the last settled hour,
    # where stepping through the empty hours two at a time would take over twenty.
    with engine.connect() as connection:
        settled = connection.execute(
            select(func.max(generation_events.c.created_at)).where(
                generation_events.c.created_at < utcnow() - monitoring.SETTLE
            )
        ).scalar_one()
    assert reached == sorted(reached)
    assert reached[-1] == settled.replace(minute=0, second=0, microsecond=0)


def test_the_rollup_command_rolls_up_every_settled_hour(
    cli: Callable[..., CliRun], engine: Engine, database_url: str
) -> None:
    seed(engine)
    cli(database_url, "rollup").json()
    with engine.connect() as connection:
        assert connection.execute(select(func.sum(generation_stats_hourly.c.requests))).scalar_one() == 6


def test_hit_rate_and_generations_per_bucket_are_the_summary_definitions(engine: Engine) -> None:
    seed(engine)
    since = utcnow() - timedelta(days=7)
    buckets = monitoring.traffic_over_time(engine, since, "day")
    summary = monitoring.summary(engine, since)
    assert sum(b.hits for b in buckets) == summary.hits
    assert sum(b.generations for b in buckets) == summary.generations
    assert monitoring.hit_rate(sum(b.hits for b in buckets), summary.hits + summary.generations) == summary.hit_rate
    # Fastest bin first; the 60 s error is not a served request.
    labels = [r["label"] for r in monitoring.latency_histogram(engine, since)]
    assert labels == ["< 1.0 ms", "< 2.0 ms", "< 5.0 ms", "< 10.0 s", "< 10.0 s"]  # bypass, miss
    assert monitoring.latency_bin_label(None) == "≥ 20.0 s"


def test_new_events_after_a_rollup_are_counted(engine: Engine) -> None:
    seed(engine)
    monitoring.refresh_rollup(engine)
    with engine.begin() as connection:
        insert_event(connection, GenerationEvent(user_id="u", cache_key="k", outcome="hit", latency_ms=1.0))
    assert monitoring.summary(engine, utcnow() - timedelta(days=7)).hits == 5


def test_ttl_replay_is_exact(engine: Engine) -> None:
    start = utcnow() - timedelta(hours=10)
    requests = [(0, "miss"), (0.5, "hit"), (2, "miss"), (2.5, "hit"), (3, "bypass"), (3.2, "hit")]
    with engine.begin() as connection:
        for hours, outcome in requests:
            insert_event(
                connection,
                GenerationEvent(
                    user_id="a",
                    cache_key="program:ua:paidfalse:dA",
                    outcome=outcome,
                    latency_ms=1.0,
                    created_at=start + timedelta(hours=hours),
                ),
            )
        insert_event(
            connection,
            GenerationEvent(
                user_id="b",
                cache_key="program:ub:paidfalse:dB",
                outcome="miss",
                latency_ms=1.0,
                created_at=start + timedelta(hours=0.1),
            ),
        )
    outcomes = {o.ttl_hours: o for o in monitoring.replay_ttls(engine, [0.25, 1, 24])}
    # A with 15 min: all but the request 12 min after the forced one; 1 h: at 0, 2 and 3 (forced);
    # 24 h: at 0 and 3 (forced). B: its one request.
    assert {h: o.generations for h, o in outcomes.items()} == {0.25: 6, 1: 4, 24: 3}
    assert outcomes[24].requests == 7
    assert outcomes[24].hit_rate == 4 / 7


def test_the_configured_ttl_replays_forced_refreshes_and_invalidations_as_the_headline_counts_them(
    service: ProgramService, generator: CountingGenerator
) -> None:
    def ask(user_id: str, *, force: bool = False) -> bool:
        return service.generate(
            user_id=user_id, onboarding_responses=PROFILE, has_paid_access=False, force_refresh=force
        ).cache_hit

    version = service.generator.identity.version
    served = [ask("u1"), ask("u1"), ask("u1", force=True), ask("u1")]
    admin.invalidate_user(service.engine, actor="test", user_id="u1")
    served += [ask("u1"), ask("u1"), ask("u2")]
    admin.retire_generator(service.engine, actor="test", generator_version=version)  # u1's and u2's entries
    served += [ask("u2"), ask("u2"), ask("u1")]
    with service.engine.begin() as connection:  # served nothing: not a request in either
        insert_event(
            connection,
            GenerationEvent(user_id="u3", cache_key="program:uu3:paidfalse:dk", outcome="error", latency_ms=1.0),
        )
    assert served == [False, True, False, True, False, True, False, False, True, False]

    headline = monitoring.summary(service.engine)
    configured, longer = monitoring.replay_ttls(service.engine, [24, 24 * 30])
    assert headline.hit_rate == configured.hit_rate == 4 / 10
    # Nothing expired: a longer TTL saves nothing more, and every generation is one that happened.
    assert configured.generations == longer.generations == generator.calls == 6


def reference_replay(requests: list[tuple[str, float, bool]], ttl_seconds: float) -> int:
    """The replay written the obvious way, one request at a time."""
    calls, generated = 0, {}
    for key, at, forced in sorted(requests, key=lambda r: (r[0], r[1])):  # stable: ties as logged
        last = generated.get(key)
        if forced or last is None or at >= last + ttl_seconds:
            calls += 1
            generated[key] = at
    return calls


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.sampled_from(["A", "B", "C"]), st.integers(0, 72 * 60), st.booleans()), min_size=1, max_size=40
    )
)
def test_ttl_replay_matches_the_obvious_replay(sqlite_engine: Engine, requests: list[tuple[str, int, bool]]) -> None:
    start = utcnow() - timedelta(days=4)
    with sqlite_engine.begin() as connection:
        connection.execute(generation_events.delete())
        for key, minutes, forced in requests:
            insert_event(
                connection,
                GenerationEvent(
                    user_id="u",
                    cache_key=f"program:uu:paidfalse:d{key}",
                    outcome="bypass" if forced else "hit",
                    latency_ms=1.0,
                    created_at=start + timedelta(minutes=minutes),
                ),
            )
    replayed = monitoring.replay_ttls(sqlite_engine, [0.5, 6, 24])
    expected = [reference_replay([(k, m * 60.0, f) for k, m, f in requests], h * 3600) for h in (0.5, 6, 24)]
    assert [o.generations for o in replayed] == expected


def test_a_large_window_is_replayed_on_a_uniform_sample_of_keys(engine: Engine) -> None:
    with engine.begin() as connection:
        for i, char in enumerate(DIGEST_ALPHABET):
            insert_event(
                connection,
                GenerationEvent(
                    user_id="u", cache_key=f"program:u{i}:paidfalse:dxx{char}", outcome="miss", latency_ms=1.0
                ),
            )
    outcome = monitoring.replay_ttls(engine, [24], max_requests=16)[0]
    assert outcome.sampled_share == 16 / 64
    assert (outcome.requests, outcome.generations) == (16, 16)
    assert outcome.estimated_generations == 64  # the window's, not the sample's


def test_a_ttls_llm_cost_is_the_windows_generations_at_the_average_generation_cost() -> None:
    settings = Settings()
    usage = monitoring.GeneratorUsage(
        "openai-p1-test",
        "gpt-4o-mini",
        hits=3,
        generations=2,
        billed=Billed(prompt_tokens=1_200, completion_tokens=3_000),  # a failed generation's 400 too
        generation_billed=Billed(prompt_tokens=800, completion_tokens=2_000),
    )
    costs = monitoring.costs([usage], settings)
    price = settings.price_of("gpt-4o-mini")
    assert price is not None
    per_generation = price.cost(Billed(400, 1_000))
    assert costs.per_generation == pytest.approx(per_generation)
    assert monitoring.TtlOutcome(24, requests=5, generations=3).cost(costs) == pytest.approx(3 * per_generation)
    # Replayed on a quarter of the keys: the sample's generations stand for four times as many.
    sampled = monitoring.TtlOutcome(24, requests=5, generations=3, sampled_share=0.25)
    assert sampled.cost(costs) == pytest.approx(12 * per_generation)


def test_the_overview_reads_what_each_figure_reads_and_replays_without_the_database(engine: Engine) -> None:
    seed(engine)
    now = utcnow()
    since = now - timedelta(days=7)
    figures = monitoring.overview(engine, "7d", "hour", now=now)
    assert figures.as_of == now
    assert figures.summary == monitoring.summary(engine, since)
    assert figures.usage == monitoring.usage_by_generator(engine, since)
    assert figures.traffic == monitoring.traffic_over_time(engine, since, "hour")
    assert figures.errors == monitoring.errors_over_time(engine, since, "hour")
    ttls = [0.25, 24, 168]
    replayed = monitoring.replay_ttls(engine, ttls, since)
    with engine.begin() as connection:  # the what-if replays what the overview read
        connection.execute(generation_events.delete())
    assert figures.served.replay(ttls) == replayed
    assert [o.generations for o in replayed] == [6, 3, 2]


def test_how_long_a_generator_takes_lately_is_the_median_of_its_recent_generations(engine: Engine) -> None:
    assert monitoring.recent_generation_seconds(engine, "openai-p1-new") is None
    now = utcnow()
    plan = [
        # (generator, outcome, seconds, days ago)
        *[("openai-p1-new", "miss", 100.0 + n, 1 + n / 100) for n in range(25)],  # the 5 oldest left out
        ("openai-p1-new", "bypass", 10.0, 0.5),
        ("openai-p1-new", "hit", 0.005, 0.1),
        ("openai-p1-new", "error", 300.0, 0.1),
        ("openai-p1-old", "miss", 5.0, 0.1),
        ("openai-p1-stale", "miss", 30.0, 8),
    ]
    with engine.begin() as connection:
        for version, outcome, seconds, days in plan:
            event = GenerationEvent(
                user_id="u",
                cache_key="program:uu:paidfalse:dk",
                outcome=outcome,  # type: ignore[arg-type]
                latency_ms=seconds * 1000,
                generator_version=version,
                created_at=now - timedelta(days=days),
            )
            insert_event(connection, event)
    # The bypass and the 19 newest misses (100-118 s): the median is between the 10th and 11th.
    assert monitoring.recent_generation_seconds(engine, "openai-p1-new") == pytest.approx(108.5)
    assert monitoring.recent_generation_seconds(engine, "openai-p1-old") == pytest.approx(5.0)
    assert monitoring.recent_generation_seconds(engine, "openai-p1-stale") is None  # not in the last week
