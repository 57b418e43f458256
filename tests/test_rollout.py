"""A generator change without a cold cache (issue 23): try a candidate model on recent
profiles, plan and run a pre-warm for it, and serve what it staged once the app runs with
the candidate, as pre-warmed hits with no LLM call."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from core import admin, rollout, staged_programs
from core.db import Database
from core.generators import make_generator
from core.schema import ai_coach_cache, rollout_programs, training_programs
from core.service import ProgramService
from core.settings import Settings
from tests.conftest import CliRun
from tests.fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, Behaviour, FakeOpenAI
from tests.helpers import PROFILE, count_rows

CURRENT, CANDIDATE = "gpt-4o-mini", "gpt-4.1-mini"
USERS = ("u1", "u2", "u3")
DAY = timedelta(hours=25)


def settings_for(database_url: str, fake: FakeOpenAI, model: str = CURRENT) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        openai_api_key="sk-test",  # type: ignore[arg-type]
        openai_base_url=fake.base_url,
        openai_model=model,
    )


def app_service(engine: Engine, settings: Settings) -> ProgramService:
    """The service as the app builds it with these settings."""
    return ProgramService.from_settings(settings, database=Database(engine), generator=make_generator(settings))


def serve(service: ProgramService, user_id: str, **options: Any) -> Any:
    return service.generate(user_id=user_id, onboarding_responses=PROFILE, has_paid_access=False, **options)


@pytest.fixture
def current(engine: Engine, database_url: str, fake_openai: FakeOpenAI) -> Settings:
    """Three users with valid entries made by the current model."""
    settings = settings_for(database_url, fake_openai)
    service = app_service(engine, settings)
    for user in USERS:
        serve(service, user)
    fake_openai.reset()
    return settings


def staged_rows(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(rollout_programs).order_by(rollout_programs.c.cache_key)))


def test_the_plan_names_the_keys_another_generator_made_and_prices_them_live_and_batched(
    engine: Engine, current: Settings
) -> None:
    candidate = rollout.candidate(current, CANDIDATE)
    plan = rollout.plan(engine, current, candidate)

    assert plan.count == 3 and plan.with_recorded_tokens == 3
    assert plan.by_generator == {make_generator(current).identity.version: 3}
    price = current.price_of(CANDIDATE)
    assert price is not None
    assert plan.live_cost == pytest.approx(3 * price.cost(PROMPT_TOKENS, COMPLETION_TOKENS))
    assert plan.batch_cost == pytest.approx(plan.live_cost / 2)
    # The current generator has nothing to pre-warm: its own entries are its own.
    assert rollout.plan(engine, current, rollout.candidate(current, CURRENT)).count == 0
    assert rollout.plan(engine, current, candidate, limit=2).count == 2


def test_a_live_prewarm_stages_programs_that_the_switched_app_serves_as_prewarmed_hits(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    candidate = rollout.candidate(current, CANDIDATE)
    started = rollout.start(engine, current, candidate, actor="cli", live=True)
    assert (started.kind, started.requested, fake_openai.calls) == ("live", 3, 3)
    assert {row.state for row in staged_rows(engine)} == {"staged"}
    # Nothing served changes before the switch: the current app still hits its own entries.
    assert serve(app_service(engine, current), "u1").prewarmed_by is None
    assert rollout.plan(engine, current, candidate).count == 0  # staged already: not again

    switched = app_service(engine, settings_for(str(engine.url), fake_openai, CANDIDATE))
    fake_openai.reset()
    result = serve(switched, "u2")
    assert result.cache_hit and result.prewarmed_by == started.rollout_id and fake_openai.calls == 0
    assert result.model == CANDIDATE and result.generator_version == candidate.identity.version
    row = next(r for r in staged_rows(engine) if r.cache_key == result.cache_key)
    with engine.connect() as connection:
        entry = connection.execute(select(ai_coach_cache).where(ai_coach_cache.c.cache_key == result.cache_key)).one()
        saved = connection.execute(
            select(training_programs).where(training_programs.c.id == result.training_program_id)
        ).one()
    # Valid for the TTL from when it was generated, as any entry; history names its model.
    assert entry.created_at == row.generated_at and entry.expires_at == row.generated_at + timedelta(hours=24)
    assert entry.generator_version == candidate.identity.version and row.used_at is not None
    assert (saved.source, saved.model, saved.program) == ("cache", CANDIDATE, result.program)
    # The staged program is the key's entry now: the next request is an ordinary hit.
    again = serve(switched, "u2")
    assert again.cache_hit and again.prewarmed_by is None and fake_openai.calls == 0


def test_a_forced_refresh_generates_even_with_a_staged_program(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    rollout.start(engine, current, rollout.candidate(current, CANDIDATE), actor="cli", live=True)
    switched = app_service(engine, settings_for(str(engine.url), fake_openai, CANDIDATE))
    fake_openai.reset()
    result = serve(switched, "u1", force_refresh=True)
    assert not result.cache_hit and fake_openai.calls == 1
    assert all(row.used_at is None for row in staged_rows(engine))


def test_a_staged_program_that_expired_is_not_served_and_cleanup_drops_it(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    rollout.start(engine, current, rollout.candidate(current, CANDIDATE), actor="cli", live=True)
    with engine.begin() as connection:
        for row in staged_rows(engine):
            connection.execute(
                update(rollout_programs)
                .where(rollout_programs.c.id == row.id)
                .values(generated_at=row.generated_at - DAY, expires_at=row.expires_at - DAY)
            )
    switched = app_service(engine, settings_for(str(engine.url), fake_openai, CANDIDATE))
    fake_openai.reset()
    result = serve(switched, "u1")
    assert not result.cache_hit and result.miss_reason == "generator_changed" and fake_openai.calls == 1

    removal = admin.delete_expired_entries(engine, actor="cli")
    assert removal.staged_dropped == 3
    assert [row.program for row in staged_rows(engine)] == [None] * 3
    assert len(staged_rows(engine)) == 3  # the rollout's record stays


def test_failed_and_invalid_live_generations_are_counted_never_staged(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(Behaviour(mode="wrong_shape"))
    started = rollout.start(engine, current, rollout.candidate(current, CANDIDATE), actor="cli", live=True)
    rows = staged_rows(engine)
    assert {row.state for row in rows} == {"invalid"} and all(row.program is None for row in rows)
    assert all("sessions" in row.error for row in rows)
    [summary] = rollout.summaries(engine, current)
    assert (summary.id, summary.states, summary.used, summary.phase) == (started.rollout_id, {"invalid": 3}, 0, "collected")
    assert summary.cost is not None and summary.cost > 0  # billed all the same
    assert staged_programs.has_staged(engine, rows[0].cache_key, rows[0].generator_version) is False


def test_a_trial_compares_the_candidate_with_the_current_generator_and_caches_nothing(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    before = (count_rows(engine, ai_coach_cache), count_rows(engine, training_programs))
    candidate = rollout.candidate(current, CANDIDATE)
    trial = rollout.trial(
        engine, current, candidate, current_version=make_generator(current).identity.version, actor="cli", sample=2
    )
    assert (count_rows(engine, ai_coach_cache), count_rows(engine, training_programs)) == before
    assert fake_openai.calls == 2 and len(trial.profiles) == 2
    assert trial.candidate.programs == 2 and trial.candidate.valid_first_try == 1.0
    assert trial.candidate.prompt_tokens == 2 * PROMPT_TOKENS and trial.candidate.latency_p50_ms
    assert trial.current.programs == 2 and trial.current.valid_first_try == 1.0
    assert all(p.candidate_program and p.current_program for p in trial.profiles)
    # A trial's programs are never served.
    assert rollout.plan(engine, current, candidate).count == 3
    assert rollout.spend(engine, current).trials > 0


def test_the_cli_plans_starts_live_and_reports_rollouts(
    engine: Engine, current: Settings, cli: Callable[..., CliRun], fake_openai: FakeOpenAI
) -> None:
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url}
    url = str(current.database_url)
    planned = cli(url, "rollout", "plan", "--model", CANDIDATE, **env).json()
    assert planned["keys"] == 3 and planned["estimated_cost_usd"]["batch"] > 0
    started = cli(url, "rollout", "start", "--model", CANDIDATE, "--live", "--limit", "2", **env).json()
    assert (started["kind"], started["requested"]) == ("live", 2)
    status = cli(url, "rollout", "status", **env).json()
    assert status["batches"] == [] and status["rollouts"][0]["states"] == {"staged": 2}

    refused = cli(url, "rollout", "plan", "--model", CANDIDATE)
    assert refused.code == 2 and refused.stderr.count("\n") == 1 and "OPENAI_API_KEY" in refused.stderr
