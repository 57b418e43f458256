"""A generator change without a cold cache (issue 23): try a candidate model on recent
profiles, plan and run a pre-warm for it, and serve what it staged once the app runs with
the candidate, as pre-warmed hits with no LLM call."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import openai
import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import DBAPIError
from streamlit.testing.v1 import AppTest

from core.contract.models import parse_onboarding
from core.generators import make_generator
from core.operations import admin
from core.operations.rollout import batches, reports
from core.operations.rollout import live as rollout_live
from core.operations.rollout import plan as rollout_plan
from core.operations.rollout import records as rollout_records
from core.operations.rollout import start as rollout_start
from core.prices import Billed
from core.serving.service import ProgramService
from core.serving.single_flight import Lease
from core.settings import Settings
from core.store import rejections, staged_programs
from core.store.db import Database, make_engine
from core.store.schema import ai_coach_cache, rollout_programs, training_programs, utcnow
from tests.conftest import CliRun, Faults, Shared
from tests.fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, BatchBehaviour, Behaviour, FakeOpenAI
from tests.helpers import PROFILE, as_read, count_rows, expire_entries, start_cli
from tests.pages.test_pages import fill, submit

CURRENT, CANDIDATE = "gpt-4o-mini", "gpt-4.1-mini"
USERS = ("u1", "u2", "u3")
DAY = timedelta(hours=25)


def settings_for(database_url: str, fake: FakeOpenAI, model: str = CURRENT) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        openai_api_key="sk-test",
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
    candidate = rollout_plan.candidate(current, CANDIDATE)
    plan = rollout_plan.plan(engine, current, candidate)

    assert plan.count == 3 and plan.with_recorded_tokens == 3
    assert plan.by_generator == {make_generator(current).identity.version: 3}
    price = current.price_of(CANDIDATE)
    assert price is not None
    assert plan.live_cost == pytest.approx(3 * price.cost(Billed(PROMPT_TOKENS, COMPLETION_TOKENS)))
    assert plan.batch_cost == pytest.approx(plan.live_cost / 2)
    assert rollout_plan.plan(engine, current, candidate, rollout_plan.Selection(limit=2)).count == 2
    # Entries valid for 24 h: none has 25 h left.
    assert rollout_plan.plan(engine, current, candidate, rollout_plan.Selection(min_hours_left=23)).count == 3
    assert rollout_plan.plan(engine, current, candidate, rollout_plan.Selection(min_hours_left=25)).count == 0


def test_keys_requested_lately_whose_entries_expired_are_planned_only_when_asked_for(
    engine: Engine, current: Settings
) -> None:
    expire_entries(engine, ai_coach_cache.c.user_id == "u1")
    candidate = rollout_plan.candidate(current, CANDIDATE)
    assert {t.user_id for t in rollout_plan.plan(engine, current, candidate).targets} == {"u2", "u3"}
    lately = rollout_plan.plan(engine, current, candidate, rollout_plan.Selection(requested_within_days=1))
    assert {t.user_id for t in lately.targets} == set(USERS)
    assert lately.by_generator == {make_generator(current).identity.version: 2, "none": 1}


def test_a_live_prewarm_stages_programs_that_the_switched_app_serves_as_prewarmed_hits(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    candidate = rollout_plan.candidate(current, CANDIDATE)
    started = rollout_start.start(engine, current, candidate, actor="cli", live=True)
    assert (started.kind, started.requested, fake_openai.calls) == ("live", 3, 3)
    assert {row.state for row in staged_rows(engine)} == {"staged"}
    # Nothing served changes before the switch: the current app still hits its own entries.
    assert serve(app_service(engine, current), "u1").prewarmed_by is None
    assert rollout_plan.plan(engine, current, candidate).count == 0  # staged already: not again

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
    rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli", live=True)
    switched = app_service(engine, settings_for(str(engine.url), fake_openai, CANDIDATE))
    fake_openai.reset()
    result = serve(switched, "u1", force_refresh=True)
    assert not result.cache_hit and fake_openai.calls == 1
    assert all(row.used_at is None for row in staged_rows(engine))


def test_a_staged_program_that_expired_is_not_served_and_cleanup_drops_it(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli", live=True)
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
    started = rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli", live=True)
    rows = staged_rows(engine)
    assert {row.state for row in rows} == {"invalid"} and all(row.program is None for row in rows)
    assert all("sessions" in row.error for row in rows)
    [summary] = reports.summaries(engine, current)
    assert (summary.id, summary.states, summary.used, summary.phase) == (
        started.rollout_id,
        {"invalid": 3},
        0,
        "collected",
    )
    assert summary.cost is not None and summary.cost > 0  # billed all the same
    assert staged_programs.has_staged(engine, rows[0].cache_key, rows[0].generator_version) is False


def test_a_trial_compares_the_candidate_with_the_current_generator_and_caches_nothing(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    before = (count_rows(engine, ai_coach_cache), count_rows(engine, training_programs))
    candidate = rollout_plan.candidate(current, CANDIDATE)
    tried = rollout_live.trial(engine, current, candidate, actor="cli", sample=2)
    trial = reports.trial_report(engine, current, tried, current_version=make_generator(current).identity.version)
    assert (count_rows(engine, ai_coach_cache), count_rows(engine, training_programs)) == before
    assert fake_openai.calls == 2 and len(trial.profiles) == 2
    assert trial.candidate.programs == 2 and trial.candidate.valid_first_try == 1.0
    assert trial.candidate.billed.prompt_tokens == 2 * PROMPT_TOKENS and trial.candidate.latency_p50_ms
    assert trial.current.programs == 2 and trial.current.valid_first_try == 1.0
    assert all(p.candidate_program and p.current_program for p in trial.profiles)
    # A trial's programs are never served.
    assert rollout_plan.plan(engine, current, candidate).count == 3
    assert reports.spend(engine, current).trials > 0


def test_a_trial_shows_per_generator_which_rules_were_broken_and_how_many_programs_needed_a_repair(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(Behaviour(breaks="goal", mends=True))
    candidate = rollout_plan.candidate(current, CANDIDATE)
    tried = rollout_live.trial(engine, current, candidate, actor="cli", sample=2)
    trial = reports.trial_report(engine, current, tried, current_version=make_generator(current).identity.version)
    assert fake_openai.calls == 4  # each profile's program sent back once, as a live miss's is
    assert trial.candidate.valid_first_try == 0.0 and all(p.candidate_program for p in trial.profiles)
    [report] = trial.fit  # the current generator's programs for these profiles broke nothing
    assert (report.generator_version, report.refused, report.repaired) == (candidate.identity.version, 0, 2)
    assert report.by_rule == {"goal": 2}


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("requested_within_days", 1e12, "requested_days"),
        ("min_hours_left", 1e308, "min_hours_left"),
        ("limit", 10**12, "limit"),
    ],
)
def test_a_selection_past_its_bounds_is_refused_naming_the_option(option: str, value: float, named: str) -> None:
    # As the admin page builds one: 1e12 days overflowed a date, 1e12 hours PostgreSQL's interval.
    with pytest.raises(rollout_records.RolloutRefused, match=rf"{named}: must be a number from \d+ to \d+"):
        rollout_plan.Selection(**{option: value})


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

    bad = cli(url, "rollout", "plan", "--model", CANDIDATE, "--limit", "0", **env)
    assert bad.code == 2 and bad.stderr.count("\n") == 1 and "--limit: must be a whole number from 1 to" in bad.stderr
    refused = cli(url, "rollout", "plan", "--model", CANDIDATE)
    assert refused.code == 2 and refused.stderr.count("\n") == 1 and "OPENAI_API_KEY" in refused.stderr


def test_the_cli_refuses_the_current_model_as_the_candidate_and_warns_of_one_the_server_does_not_list(
    current: Settings, cli: Callable[..., CliRun], fake_openai: FakeOpenAI
) -> None:
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_MODEL": CURRENT}
    url = str(current.database_url)
    for step in (["plan"], ["try"], ["start", "--live"]):
        refused = cli(url, "rollout", *step, "--model", CURRENT, **env)
        assert (refused.code, refused.stdout) == (2, "")
        assert (
            refused.stderr
            == f"error: invalid rollout: model: {CURRENT} is the generator the app runs now; name another model\n"
        )
    fake_openai.reset(Behaviour(served_models=(CURRENT,)))
    planned = cli(url, "rollout", "plan", "--model", CANDIDATE, **env)
    assert planned.json()["keys"] == 3
    assert planned.stderr == (
        f"WARNING core.cli: the LLM server does not list OPENAI_MODEL={CANDIDATE}; it serves: {CURRENT}\n"
    )


def test_try_it_refuses_the_current_model_and_warns_of_one_the_server_does_not_list(
    current: Settings, fake_openai: FakeOpenAI, app_test: Callable[..., AppTest]
) -> None:
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_MODEL": CURRENT}
    at = app_test(str(current.database_url), **env).run()
    at.switch_page("pages/admin.py").run()
    at.text_input(key="rollout_model").input(CURRENT)
    next(b for b in at.button if b.label == "Try it").click().run()
    assert [as_read(e.value) for e in at.error] == [
        f"invalid rollout: model: {CURRENT} is the generator the app runs now; name another model"
    ]
    assert fake_openai.calls == 0

    fake_openai.reset(Behaviour(served_models=(CURRENT,)))
    at.text_input(key="rollout_model").input(CANDIDATE)
    next(b for b in at.button if b.label == "Try it").click().run()
    assert not at.error
    assert f"does not list OPENAI_MODEL={CANDIDATE}; it serves: {CURRENT}" in as_read(at.warning[-1].value)


def check(engine: Engine, settings: Settings) -> list[batches.BatchCheck]:
    return batches.check_batches(engine, settings)


def test_a_batch_prewarm_is_submitted_polled_collected_by_custom_id_and_served(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    candidate = rollout_plan.candidate(current, CANDIDATE)
    started = rollout_start.start(engine, current, candidate, actor="cli")
    [batch] = fake_openai.batches
    assert started.batch_ids == (batch.id,) and fake_openai.calls == 0
    assert len(batch.lines) == 3 and batch.endpoint == "/v1/chat/completions"
    # The line is the request a live call sends, unstreamed, named by the candidate and the key.
    line = batch.lines[0]
    version, key = line["custom_id"].split("|", 1)
    assert version == candidate.identity.version and key.startswith("program:u")
    assert line["body"] == candidate.request(parse_onboarding(PROFILE), False)
    assert {row.state for row in staged_rows(engine)} == {"pending"}

    [polled] = check(engine, current)  # validating -> in progress
    assert (polled.status, polled.collected) == ("in_progress", False)
    [summary] = reports.summaries(engine, current)
    assert summary.phase == "in progress"
    [collected] = check(engine, current)  # the results come back shuffled
    assert (collected.status, collected.collected, collected.recorded) == ("completed", True, {"staged": 3})
    assert check(engine, current) == []  # collected once
    [summary] = reports.summaries(engine, current)
    assert (summary.phase, summary.states, summary.batches) == ("collected", {"staged": 3}, {"completed": 1})
    price = current.price_of(CANDIDATE)
    assert price is not None
    assert summary.cost == pytest.approx(3 * price.cost(Billed(PROMPT_TOKENS, COMPLETION_TOKENS), "batch"))

    switched = app_service(engine, settings_for(str(engine.url), fake_openai, CANDIDATE))
    result = serve(switched, "u3")
    assert result.prewarmed_by == started.rollout_id and fake_openai.calls == 0
    [summary] = reports.summaries(engine, current)
    assert summary.used == 1 and summary.saved == pytest.approx(price.cost(Billed(PROMPT_TOKENS, COMPLETION_TOKENS)))
    spent = reports.spend(engine, current)
    assert (spent.batch, spent.saved) == (pytest.approx(summary.cost), pytest.approx(summary.saved))


def test_failed_and_invalid_lines_are_counted_and_listed_never_staged(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(
        batch=BatchBehaviour(
            polls_in_progress=0,
            fail_custom_ids=frozenset({":uu1:"}),
            line_behaviours={":uu2:": Behaviour(mode="refusal")},
        )
    )
    rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    [collected] = check(engine, current)
    assert collected.recorded == {"failed": 1, "invalid": 1, "staged": 1}
    by_user = {row.user_id: row for row in staged_rows(engine)}
    assert by_user["u1"].state == "failed" and "injected failure" in by_user["u1"].error
    assert by_user["u2"].state == "invalid" and "refused" in by_user["u2"].error and by_user["u2"].program is None
    assert by_user["u2"].prompt_tokens == PROMPT_TOKENS  # a refusal is billed
    assert by_user["u3"].state == "staged"
    [summary] = reports.summaries(engine, current)
    listed = {(p.state, p.error) for p in reports.problems(engine, summary.id)}
    assert listed == {("failed", by_user["u1"].error), ("invalid", by_user["u2"].error)}


@pytest.mark.parametrize("outcome", ["expired", "cancelled"])
def test_a_batch_that_ends_early_keeps_what_completed(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI, outcome: str
) -> None:
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=0, outcome=outcome, completed_before_end=1))
    rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    [collected] = check(engine, current)
    assert (collected.status, collected.recorded) == (outcome, {"staged": 1, "failed": 2})
    failed = [row for row in staged_rows(engine) if row.state == "failed"]
    assert all(f"batch_{outcome}" in row.error for row in failed)


def test_requests_are_split_into_files_within_the_batch_api_limits(engine: Engine, current: Settings) -> None:
    candidate = rollout_plan.candidate(current, CANDIDATE)
    with engine.connect() as connection:
        found = rollout_plan.targets(connection, candidate.identity.version)
    files = list(rollout_start.batch_files(candidate, found, max_lines=2))
    assert [len(chunk) for chunk, _ in files] == [2, 1]
    assert [data.count(b"\n") for _, data in files] == [2, 1]
    one_line = len(files[1][1])
    by_size = list(rollout_start.batch_files(candidate, found, max_bytes=2 * one_line + 10))
    assert [len(chunk) for chunk, _ in by_size] == [2, 1]
    assert all(len(data) <= 2 * one_line + 10 for _, data in by_size)


def test_a_batch_submission_the_server_refuses_is_recorded_and_the_cli_fails_in_one_line(
    engine: Engine, current: Settings, cli: Callable[..., CliRun]
) -> None:
    # No server listens there: the upload fails, and the requests are recorded as failed.
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "LLM_MAX_RETRIES": "0"}
    done = cli(str(current.database_url), "rollout", "start", "--model", CANDIDATE, **env)
    assert done.code == 1 and done.stderr.count("\n") == 1 and "could not be submitted" in done.stderr
    [summary] = reports.summaries(engine, current)
    assert summary.states == {"failed": 3} and summary.error


@pytest.mark.process
def test_two_instances_collecting_at_once_record_each_result_once(
    shared_database: Shared, fake_openai: FakeOpenAI
) -> None:
    settings = settings_for(shared_database.url, fake_openai)
    engine = make_engine(shared_database.url)
    try:
        service = app_service(engine, settings)
        for user in USERS:
            serve(service, user)
        fake_openai.reset(batch=BatchBehaviour(polls_in_progress=0))
        rollout_start.start(engine, settings, rollout_plan.candidate(settings, CANDIDATE), actor="cli")
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url, **shared_database.env()}
        collectors = [start_cli(shared_database.url, "rollout", "status", **env) for _ in range(2)]
        outputs = [process.communicate(timeout=120) for process in collectors]
        assert [process.returncode for process in collectors] == [0, 0], outputs
        said = [json.loads(out) for out, _ in outputs]
        recorded = Counter[str]()
        for report in said:
            for batch in report["batches"]:
                recorded.update(batch["recorded"])
        assert recorded == {"staged": 3}  # each result recorded by one of them
        assert sum(b["collected"] for r in said for b in r["batches"]) == 1
        assert [row.state for row in staged_rows(engine)] == ["staged"] * 3
        switched = app_service(engine, settings_for(shared_database.url, fake_openai, CANDIDATE))
        assert serve(switched, "u1").prewarmed_by is not None and fake_openai.calls == 0
        # A trial streams the newest profiles from history (a server-side cursor on PostgreSQL).
        tried = rollout_live.trial(engine, settings, rollout_plan.candidate(settings, CANDIDATE), actor="cli", sample=2)
        assert reports.summaries(engine, settings)[0].states == {"tried": 2}, tried
    finally:
        engine.dispose()


def test_a_second_start_for_the_same_candidate_fails_while_one_runs(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI, cli: Callable[..., CliRun]
) -> None:
    candidate = rollout_plan.candidate(current, CANDIDATE)
    # Another instance is starting a pre-warm for the candidate: it holds the lease.
    held = Lease.claim(engine, f"rollout:{candidate.identity.version}", 60)
    assert held is not None
    with held:
        env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url}
        done = cli(str(current.database_url), "rollout", "start", "--model", CANDIDATE, **env)
    assert done.code == 1 and done.stderr.count("\n") == 1 and "being started elsewhere" in done.stderr
    assert fake_openai.batches == [] and reports.summaries(engine, current) == []
    assert rollout_start.start(engine, current, candidate, actor="cli").requested == 3  # once it is done


def test_stats_split_spend_into_requests_tokens_batches_and_trials(
    engine: Engine, current: Settings, cli: Callable[..., CliRun], fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(Behaviour(cached_tokens=300, reasoning_tokens=40))
    serve(app_service(engine, current), "u4")
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=0))
    candidate = rollout_plan.candidate(current, CANDIDATE)
    rollout_start.start(engine, current, candidate, actor="cli")
    check(engine, current)
    rollout_live.trial(engine, current, candidate, actor="cli", sample=1)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url}
    stats = cli(str(current.database_url), "stats", **env).json()

    [generator] = stats["generators"]
    assert (generator["cached_tokens"], generator["reasoning_tokens"]) == (300, 40)
    by_kind = {s.kind: s.cost for s in reports.summaries(engine, current)}
    split = stats["llm_cost_split_usd"]
    assert split["batch"] == pytest.approx(by_kind["batch"], abs=1e-6)
    assert split["trials"] == pytest.approx(by_kind["trial"], abs=1e-6) and split["live_prewarm"] == 0
    requests = split["input"] + split["cached_input"] + split["output"]
    assert stats["llm_cost_usd"] == pytest.approx(requests + split["batch"] + split["trials"], abs=1e-5)


def test_the_generate_page_says_a_hit_was_prewarmed(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI, app_test: Callable[..., AppTest]
) -> None:
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=0))
    started = rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    check(engine, current)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_MODEL": CANDIDATE}
    at = app_test(str(current.database_url), **env).run()
    submit(fill(at, "u1", **PROFILE))
    assert not at.exception and fake_openai.calls == 0
    [badge] = [as_read(s.value).replace("**", "") for s in at.success]
    assert badge.startswith(
        f"Cache hit, pre-warmed: written by {CANDIDATE} ahead of the switch (rollout #{started.rollout_id})"
    )


class Interrupted:
    """The candidate, failing hard (not as a GenerationError) on its second call, as a
    process killed or a database lost in the middle of a live pre-warm."""

    def __init__(self, generator: Any) -> None:
        self._generator, self.identity, self.name, self.calls = generator, generator.identity, generator.name, 0

    def generate(self, profile: Any, has_paid_access: bool, on_progress: Any = None, rejected: Any = None) -> Any:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("killed")
        return self._generator.generate(profile, has_paid_access)


def test_an_interrupted_live_prewarm_leaves_no_request_pending_and_the_rest_is_planned_again(
    engine: Engine, current: Settings
) -> None:
    candidate = rollout_plan.candidate(current, CANDIDATE)
    with pytest.raises(RuntimeError, match="killed"):
        rollout_start.start(engine, current, Interrupted(candidate), actor="cli", live=True)
    states = Counter(row.state for row in staged_rows(engine))
    assert states["pending"] == 0 and states["failed"] >= 1, states
    assert {row.error for row in staged_rows(engine) if row.state == "failed"} == {
        "not run: the rollout was interrupted"
    }
    assert rollout_plan.plan(engine, current, candidate).count == states["failed"]


def finished() -> batches.Finished:
    submitted = utcnow() - timedelta(hours=2)
    return batches.Finished((), submitted, submitted + timedelta(hours=1), "the batch expired first", "expired")


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (None, "not run: the batch expired first"),
        (["not", "an", "object"], "the result line is not a JSON object"),
        ({"custom_id": "x", "error": "rate limited"}, "rate limited"),
        ({"custom_id": "x", "error": "rate\x00limited"}, "rate limited"),  # a text column holds no NUL
        ({"custom_id": "x", "error": {"code": "batch_expired", "message": "too late"}}, "batch_expired: too late"),
        ({"custom_id": "x", "response": "nonsense"}, "HTTP None: no message"),
        ({"custom_id": "x", "response": {"status_code": 500, "body": "down"}}, "HTTP 500: no message"),
    ],
)
def test_a_result_line_not_as_openai_documents_it_fails_that_line_only(current: Settings, line: Any, says: str) -> None:
    judged = batches.judge_line(line, PROFILE, False, rollout_plan.candidate(current, CANDIDATE), finished())
    assert (judged.state, judged.error) == ("failed", says)


def answered_line(candidate: Any, fake_openai: FakeOpenAI, *, paid: bool, **changes: Any) -> dict[str, Any]:
    """A result line as the Batch API writes it, of the stand-in's answer to the candidate's request."""
    body = candidate.request(parse_onboarding(PROFILE), paid)
    answer = openai.OpenAI(api_key="sk-test", base_url=fake_openai.base_url).chat.completions.create(**body)
    return {"custom_id": "x", "response": {"status_code": 200, "body": {**answer.model_dump(), **changes}}}


def test_a_lines_time_is_kept_between_the_batchs_submission_and_its_check(
    current: Settings, fake_openai: FakeOpenAI
) -> None:
    candidate = rollout_plan.candidate(current, CANDIDATE)
    batch = finished()
    now = int(batch.checked_at.timestamp())
    for created, expected in ((now * 1000, batch.checked_at), (0, batch.submitted_at)):
        line = answered_line(candidate, fake_openai, paid=False, created=created)
        judged = batches.judge_line(line, PROFILE, False, candidate, batch)
        assert (judged.state, judged.generated_at) == ("staged", expected)


def test_a_result_line_whose_program_does_not_fit_its_client_is_invalid_not_staged(
    current: Settings, fake_openai: FakeOpenAI
) -> None:
    """A batch line is judged as a live answer is: here a paid client's 8 weeks, for a free client."""
    candidate = rollout_plan.candidate(current, CANDIDATE)
    line = answered_line(candidate, fake_openai, paid=True)
    judged = batches.judge_line(line, PROFILE, False, candidate, finished())
    assert judged.state == "invalid" and judged.program_json is None
    assert judged.error is not None and "(rules broken: weeks)" in judged.error
    assert judged.tokens.completion_tokens == COMPLETION_TOKENS  # billed all the same


def test_status_without_an_api_key_is_one_line_naming_it(current: Settings, cli: Callable[..., CliRun]) -> None:
    done = cli(str(current.database_url), "rollout", "status")
    assert done.code == 2 and done.stderr.count("\n") == 1 and "OPENAI_API_KEY" in done.stderr


def test_a_batch_that_fails_validation_records_why_its_lines_did_not_run(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=0, max_lines=2))  # the file holds 3
    rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli")
    [collected] = check(engine, current)
    assert (collected.status, collected.recorded) == ("failed", {"failed": 3})
    assert all(row.error.startswith("not run: the batch failed: ") for row in staged_rows(engine))
    assert rollout_plan.plan(engine, current, rollout_plan.candidate(current, CANDIDATE)).count == 3  # to try again


def test_a_staged_program_that_no_longer_validates_is_not_served_nor_counted_as_used(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli", live=True)
    with engine.begin() as connection:
        connection.execute(update(rollout_programs).values(program={"title": "hand-edited"}))
    switched = app_service(engine, settings_for(str(engine.url), fake_openai, CANDIDATE))
    fake_openai.reset()
    result = serve(switched, "u1")
    assert not result.cache_hit and result.prewarmed_by is None and fake_openai.calls == 1
    [summary] = reports.summaries(engine, current)
    assert (summary.used, summary.saved, summary.states) == (0, 0, {"staged": 2, "invalid": 1})


def test_a_trial_compares_with_the_current_generators_newest_program_per_profile(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    service = app_service(engine, current)
    for _ in range(2):
        serve(service, "u3", force_refresh=True)  # u3 is the most recently requested
    candidate = rollout_plan.candidate(current, CANDIDATE)
    tried = rollout_live.trial(engine, current, candidate, actor="cli", sample=2)
    trial = reports.trial_report(engine, current, tried, current_version=make_generator(current).identity.version)
    assert (trial.current.programs, trial.current.billed.prompt_tokens) == (2, 2 * PROMPT_TOKENS)
    assert trial.current.billed.prompt_tokens == trial.candidate.billed.prompt_tokens


def test_a_batch_that_could_not_be_recorded_is_cancelled(faults: Faults, fake_openai: FakeOpenAI) -> None:
    settings = settings_for(faults.url, fake_openai)
    service = app_service(faults.engine, settings)
    for user in USERS:
        serve(service, user)
    faults.deny("rollout_batches", "INSERT")
    with pytest.raises(DBAPIError):
        rollout_start.start(faults.engine, settings, rollout_plan.candidate(settings, CANDIDATE), actor="cli")
    [batch] = fake_openai.batches
    assert batch.status in ("cancelling", "cancelled")  # nothing runs, or is billed, unrecorded


def invalidate(engine: Engine, how: str, version: str) -> None:
    """As an operator or a coach does: a user's entries, a generator's, or a rejection of u1's program."""
    if how == "user":
        admin.invalidate_user(engine, actor="ops", user_id="u1")
    elif how == "generator":
        admin.retire_generator(engine, actor="ops", generator_version=version)
    else:
        with engine.connect() as connection:
            program_id = connection.execute(
                select(training_programs.c.id).where(training_programs.c.user_id == "u1")
            ).scalar_one()
        rejections.reject(engine, program_id=program_id, category="wrong_level", note=None, actor="coach")


@pytest.mark.parametrize(("how", "voided"), [("user", {"u1"}), ("generator", set(USERS)), ("rejection", {"u1"})])
def test_an_invalidation_voids_the_staged_programs_it_covers(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI, how: str, voided: set[str]
) -> None:
    candidate = rollout_plan.candidate(current, CANDIDATE)
    rollout_start.start(engine, current, candidate, actor="cli", live=True)
    invalidate(engine, how, candidate.identity.version)
    switched = app_service(engine, settings_for(str(engine.url), fake_openai, CANDIDATE))
    fake_openai.reset()
    result = serve(switched, "u1")
    assert result.prewarmed_by is None and fake_openai.calls == 1
    rows = staged_rows(engine)
    assert {row.user_id for row in rows if row.state == "voided"} == voided
    assert all(row.program is None and row.error.startswith("voided: ") for row in rows if row.state == "voided")
    [summary] = reports.summaries(engine, current)
    assert summary.states.get("voided") == len(voided) and summary.used == 0


def test_a_request_voided_while_its_batch_was_out_is_billed_and_never_staged(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=0))
    candidate = rollout_plan.candidate(current, CANDIDATE)
    rollout_start.start(engine, current, candidate, actor="cli")
    admin.invalidate_user(engine, actor="ops", user_id="u1")
    [collected] = check(engine, current)
    assert collected.recorded == {"staged": 2}
    u1 = next(row for row in staged_rows(engine) if row.user_id == "u1")
    assert (u1.state, u1.program, u1.prompt_tokens) == ("voided", None, PROMPT_TOKENS)
    switched = app_service(engine, settings_for(str(engine.url), fake_openai, CANDIDATE))
    assert serve(switched, "u1").prewarmed_by is None


def test_the_admin_page_says_what_an_invalidation_voided(
    engine: Engine, current: Settings, fake_openai: FakeOpenAI, app_test: Callable[..., AppTest]
) -> None:
    rollout_start.start(engine, current, rollout_plan.candidate(current, CANDIDATE), actor="cli", live=True)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url}
    at = app_test(str(current.database_url), **env).run()
    at.switch_page("pages/admin.py").run()
    at.text_input(key="invalidate_user").set_value("u1")
    next(b for b in at.button if b.label == "Invalidate").click().run()
    at.button(key="invalidate_yes").click().run()
    assert at.success[0].value == "Invalidated 1 entry of `u1`. Voided 1 pre-warmed program not yet served."
    [table] = [frame.value for frame in at.dataframe if "Voided" in frame.value]
    assert list(table["Voided"]) == [1]


class InvalidatingU1:
    """The candidate, with u1's programs invalidated during every call, as an operator may
    while a live pre-warm runs."""

    def __init__(self, generator: Any, engine: Engine) -> None:
        self._generator, self._engine = generator, engine
        self.identity, self.name = generator.identity, generator.name

    def generate(self, profile: Any, has_paid_access: bool, on_progress: Any = None, rejected: Any = None) -> Any:
        admin.invalidate_user(self._engine, actor="ops", user_id="u1")
        return self._generator.generate(profile, has_paid_access)


def test_a_request_voided_while_a_live_run_generates_it_is_billed_and_never_staged(
    engine: Engine, current: Settings
) -> None:
    rollout_start.start(
        engine, current, InvalidatingU1(rollout_plan.candidate(current, CANDIDATE), engine), actor="cli", live=True
    )
    states = {row.user_id: (row.state, row.program is None, row.prompt_tokens) for row in staged_rows(engine)}
    assert states == {
        "u1": ("voided", True, PROMPT_TOKENS),
        "u2": ("staged", False, PROMPT_TOKENS),
        "u3": ("staged", False, PROMPT_TOKENS),
    }
