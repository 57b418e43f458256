"""Live runs: a trial of a candidate on recently requested profiles (nothing but the trial's own
record is written), and a live pre-warm. Each runs under a lease on the run, so that what a
killed run left pending is given up once the lease lapses."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from time import perf_counter
from typing import Any

from sqlalchemy import Engine, String, cast, literal, select, update

from core.contract.generation import GenerationError
from core.contract.models import parse_onboarding
from core.generators import ProgramGenerator
from core.operations.rollout.plan import estimate, recent_profiles, refuse_past_budget
from core.operations.rollout.records import (
    Judged,
    ProgramState,
    RolloutRefused,
    Target,
    ask,
    bill_voided,
    judge_generation,
    new_rollout,
    pending_programs,
    record_result,
)
from core.serving.repair import generate_judged
from core.serving.single_flight import Lease
from core.settings import Settings
from core.store.db import connect_to_write
from core.store.schema import (
    database_now,
    generation_leases,
    rollout_programs,
    utcnow,
)

asked = rollout_programs.c
leases = generation_leases.c

DEFAULT_SAMPLE = 10


# Live calls at once, for a trial or a pre-warm without a Batch API.
LIVE_CONCURRENCY = 4


# A live run's lease, "rollout-run:<rollout id>", and what its requests are recorded with when
# it lapsed before they were (give_up_stale).
RUN_LEASE_PREFIX = "rollout-run:"


GIVEN_UP = (
    "given up: the run that asked for it stopped before recording it (its process was killed?); "
    "a call it had in flight may have been billed, unrecorded"
)


# A trial's profiles, each a live call while the operator waits.
MAX_SAMPLE = 100


def give_up_stale(engine: Engine) -> dict[int, int]:
    """Record as failed, saying so, the requests of live runs (trials, live pre-warms) whose
    run stopped without recording them: its lease lapsed, so nothing will. How many, by
    rollout. Their keys can be planned again."""
    dialect = engine.dialect.name
    running = select(leases.cache_key).where(leases.expires_at > database_now(dialect))
    run_key = literal(RUN_LEASE_PREFIX) + cast(asked.rollout_id, String)
    stale = (asked.state == "pending", asked.batch_id.is_(None), run_key.not_in(running))
    with connect_to_write(engine) as connection, connection.begin():
        given_up = connection.execute(
            update(rollout_programs).where(*stale).values(state="failed", error=GIVEN_UP).returning(asked.rollout_id)
        )
        return dict(Counter(given_up.scalars()))


def run_live(
    engine: Engine,
    settings: Settings,
    generator: ProgramGenerator,
    rollout_id: int,
    found: Sequence[Target],
    *,
    stage: bool,
) -> None:
    """Ask for `found` and generate each through the chat endpoint, a few at once, recording
    each as it comes back; under a lease on the run, renewed while it runs, so that what a
    killed run left pending is given up once it lapses (give_up_stale)."""
    lease = Lease.claim(engine, f"{RUN_LEASE_PREFIX}{rollout_id}", settings.generation_lease_seconds)
    assert lease is not None  # a new rollout's: nobody else has asked for it
    with lease:
        with connect_to_write(engine) as connection, connection.begin():
            ask(connection, rollout_id, generator.identity.version, found)
        _generate_pending(engine, settings, generator, rollout_id, stage=stage)


def _generate_pending(
    engine: Engine, settings: Settings, generator: ProgramGenerator, rollout_id: int, *, stage: bool
) -> None:
    with engine.connect() as connection:
        pending = pending_programs(connection, asked.rollout_id == rollout_id)
    ttl = timedelta(hours=settings.cache_ttl_hours)
    valid: ProgramState = "staged" if stage else "tried"

    def one(row: Any) -> None:
        started, generated_at = perf_counter(), utcnow()
        try:
            # Repaired as a live miss is, so that a trial says what serving would do.
            profile, repairs = parse_onboarding(row.onboarding_responses), settings.llm_repair_attempts
            outcome = generate_judged(generator, profile, row.has_paid_access, repairs=repairs)
        except GenerationError as exc:
            judged = Judged("failed", exc.billed, error=str(exc))
        else:
            generation = outcome.generation
            judged = judge_generation(generation, row.onboarding_responses, row.has_paid_access, valid, generated_at)
            judged = replace(judged, **outcome.recorded())
        with connect_to_write(engine) as connection, connection.begin():
            if not record_result(
                connection, row.id, replace(judged, latency_ms=(perf_counter() - started) * 1000), ttl
            ):
                bill_voided(connection, row.id, judged.tokens)

    pool = ThreadPoolExecutor(max_workers=LIVE_CONCURRENCY, thread_name_prefix="rollout")
    try:
        list(pool.map(one, pending))
    finally:
        # Interrupted (Ctrl-C, a failed database): what has not started does not start, and
        # is recorded as not run rather than left pending.
        pool.shutdown(wait=True, cancel_futures=True)
        with connect_to_write(engine) as connection, connection.begin():
            connection.execute(
                update(rollout_programs)
                .where(asked.rollout_id == rollout_id, asked.state == "pending")
                .values(state="failed", error="not run: the rollout was interrupted")
            )


def trial(
    engine: Engine,
    settings: Settings,
    generator: ProgramGenerator,
    *,
    actor: str,
    sample: int = DEFAULT_SAMPLE,
) -> int:
    """Generate live with the candidate for the `sample` most recently requested profiles,
    without touching the cache or history; the trial's rollout id, to compare it with the
    current generator on the same profiles (core/operations/rollout/reports.py)."""
    if not 1 <= sample <= MAX_SAMPLE:
        raise RolloutRefused("sample", f"must be a number from 1 to {MAX_SAMPLE}")
    with engine.connect() as connection:
        found = recent_profiles(connection, sample)
    if not found:
        raise RolloutRefused("sample", "there are no requested profiles to try yet: generate a program first")
    estimated = estimate(settings.price_of(generator.identity.model), found, "live")
    refuse_past_budget(engine, settings, estimated, f"a trial of {len(found)} profiles")
    rollout_id = new_rollout(engine, "trial", generator, len(found), actor)
    run_live(engine, settings, generator, rollout_id, found, stage=False)
    return rollout_id
