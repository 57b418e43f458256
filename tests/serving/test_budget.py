"""The spend guard (issue 33): LLM_DAILY_BUDGET_USD and LLM_MONTHLY_BUDGET_USD, spend counted as
the invoice counts it, the offline coach (or a refusal) once a budget is spent, hits never
affected, instances sharing the budget through the database, rollouts refused past it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update
from streamlit.testing.v1 import AppTest

from core.formatting import format_dollars
from core.generators import OfflineGenerator, make_generator
from core.operations import spend
from core.operations.rollout import live as rollout_live
from core.operations.rollout import plan as rollout_plan
from core.operations.rollout import start as rollout_start
from core.serving.results import GenerationFailed
from core.serving.service import ProgramService
from core.settings import Settings
from core.store.db import Database
from core.store.entries import database_time
from core.store.schema import generation_events, rollouts, training_programs
from tests.conftest import CliRun, Faults, Shared
from tests.fake_openai import PROMPT_TOKENS, BatchBehaviour, Behaviour, FakeOpenAI
from tests.helpers import PROFILE, start_cli
from tests.operations.test_rollout import CANDIDATE, USERS, check, settings_for
from tests.pages.test_pages import fill, submit

# A call of the stand-in bills PROMPT_TOKENS input tokens and costs exactly CALL_USD.
MODEL = "gpt-test"
PRICES = json.dumps({MODEL: {"input": 1000.0, "output": 0.0}})
CALL_USD = PROMPT_TOKENS * 1000.0 / 1_000_000  # $0.42


def budget_env(fake: FakeOpenAI, **env: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_MODEL": MODEL,
        "MODEL_PRICES": PRICES,
        "LLM_MAX_RETRIES": "0",
        **env,
    }


def budget_service(engine: Engine, fake: FakeOpenAI, **budget: Any) -> ProgramService:
    settings = Settings(
        _env_file=None,
        openai_api_key="sk-test",
        openai_base_url=fake.base_url,
        openai_model=MODEL,
        model_prices=PRICES,
        llm_max_retries=0,
        **budget,
    )
    return ProgramService.from_settings(settings, database=Database(engine), generator=make_generator(settings))


def ask(service: ProgramService, user_id: str) -> Any:
    return service.generate(user_id=user_id, onboarding_responses=PROFILE, has_paid_access=True)


def test_the_request_that_crosses_the_budget_is_served_the_next_miss_gets_the_offline_program_marked(
    engine: Engine, fake_openai: FakeOpenAI
) -> None:
    service = budget_service(engine, fake_openai, llm_daily_budget_usd=0.5)
    assert ask(service, "u1").model == MODEL  # $0.42: within the budget
    crossing = ask(service, "u2")  # started at $0.42, under $0.50: served, $0.84 spent
    assert crossing.model == MODEL and crossing.budget_reached is None
    assert fake_openai.calls == 2

    fallback = ask(service, "u3")
    assert fake_openai.calls == 2  # no LLM call
    assert fallback.cache_hit is False and fallback.generator_version == OfflineGenerator.identity.version
    assert fallback.budget_reached is not None and "LLM_DAILY_BUDGET_USD=0.50" in fallback.budget_reached
    assert "$0.8400 spent" in fallback.budget_reached
    with engine.connect() as connection:
        rows = connection.execute(select(training_programs.c.user_id, training_programs.c.source))
        sources = {user_id: source for user_id, source in rows}
    assert sources == {"u1": "llm", "u2": "llm", "u3": "budget"}

    # A hit is still a hit, with no LLM call, budget or not.
    hit = ask(service, "u1")
    assert hit.cache_hit is True and hit.model == MODEL and fake_openai.calls == 2

    # Once the budget allows, the offline entry is another generator's: an LLM program replaces it.
    allowed = budget_service(engine, fake_openai, llm_daily_budget_usd=5.0)
    replaced = ask(allowed, "u3")
    assert replaced.miss_reason == "generator_changed" and replaced.model == MODEL and fake_openai.calls == 3


def test_the_cli_refuses_in_one_line_once_the_budget_is_spent_or_says_the_program_is_the_offline_coachs(
    database_url: str, cli: Callable[..., CliRun], fake_openai: FakeOpenAI, profile_file: Path
) -> None:

    def generate(user_id: str, **env: str) -> CliRun:
        args = ("generate", "--user-id", user_id, "--profile", str(profile_file))
        return cli(database_url, *args, **budget_env(fake_openai, LLM_MONTHLY_BUDGET_USD="0.1", **env))

    assert generate("u1").json()["budget_reached"] is None  # $0.42 spent: past the budget

    refused = generate("u2", BUDGET_EXCEEDED="refuse")
    assert refused.code == 1 and refused.stdout == ""
    error = refused.stderr.splitlines()[-1]  # after the log's warning
    assert error.startswith("error: the LLM budget is spent (LLM_MONTHLY_BUDGET_USD=0.10: $0.4200 spent since ")
    assert error.endswith("BUDGET_EXCEEDED=refuse, so no program was generated. Nothing was cached or saved.")

    offline = generate("u2")
    assert offline.code == 0 and "LLM_MONTHLY_BUDGET_USD=0.10" in offline.json()["budget_reached"]
    assert offline.json()["model"] == OfflineGenerator.identity.model
    assert "note: made by the offline coach because the LLM budget is spent" in offline.stderr

    assert generate("u1", BUDGET_EXCEEDED="refuse").json()["cache_hit"] is True
    assert fake_openai.calls == 1


def test_spend_is_what_stats_bills_failed_generations_batches_and_trials_included_since_00_utc(
    engine: Engine, database_url: str, fake_openai: FakeOpenAI, cli: Callable[..., CliRun]
) -> None:
    settings = settings_for(database_url, fake_openai)
    service = ProgramService.from_settings(settings, database=Database(engine), generator=make_generator(settings))
    for user in USERS:
        ask(service, user)
    fake_openai.reset(Behaviour(mode="truncated"))
    with pytest.raises(GenerationFailed):
        ask(service, "u4")
    fake_openai.reset(batch=BatchBehaviour(polls_in_progress=0))
    candidate = rollout_plan.candidate(settings, CANDIDATE)
    rollout_start.start(engine, settings, candidate, actor="cli")
    check(engine, settings)
    rollout_live.trial(engine, settings, candidate, actor="cli", sample=1)
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url}
    billed = cli(database_url, "stats", **env).json()["llm_cost_usd"]

    today = spend.period_start(database_time(engine), "day")
    assert billed > 0 and spend.spent(engine, settings, today) == pytest.approx(billed, abs=1e-6)
    # A request billed before 00:00 UTC counts for yesterday, not today.
    with engine.begin() as connection:
        connection.execute(
            update(generation_events).values(created_at=today - timedelta(minutes=1)).where(generation_events.c.id == 1)
        )
    assert spend.spent(engine, settings, today) < billed - 1e-6


def test_rollout_start_and_try_are_refused_when_their_estimate_would_pass_the_budget(
    engine: Engine, database_url: str, cli: Callable[..., CliRun], fake_openai: FakeOpenAI
) -> None:
    settings = settings_for(database_url, fake_openai)
    service = ProgramService.from_settings(settings, database=Database(engine), generator=make_generator(settings))
    for user in USERS:
        ask(service, user)
    fake_openai.reset()
    spent = spend.spent(engine, settings, spend.period_start(database_time(engine), "day"))
    # Some budget left, less than a trial of one profile would take at the candidate's price.
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "LLM_DAILY_BUDGET_USD": str(spent + 0.001),
    }

    for args in (("try", "--sample", "1"), ("start", "--live"), ("start",)):
        refused = cli(database_url, "rollout", *args, "--model", CANDIDATE, **env)
        assert refused.code == 1 and refused.stdout == "", refused.stderr
        error = refused.stderr.splitlines()[-1]
        assert "would take LLM spend past the budget (LLM_DAILY_BUDGET_USD=" in error
        assert error.startswith("error: a ") and error.endswith("nothing was started")
    assert fake_openai.calls == 0 and fake_openai.batches == []
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(rollouts)).scalar_one() == 0


def test_the_pages_mark_the_offline_program_and_show_spend_against_each_budget(
    tmp_path: Path, app_test: Callable[..., AppTest], fake_openai: FakeOpenAI
) -> None:
    env = budget_env(fake_openai, LLM_DAILY_BUDGET_USD="0.1", LLM_MONTHLY_BUDGET_USD="10")
    app = app_test(f"sqlite:///{tmp_path}/coach.db", **env).run()
    submit(fill(app, "client-1"))  # $0.42: past the daily budget
    submit(fill(app, "client-2"))
    assert not app.exception
    [marked] = [w.value for w in app.warning if "Made by the offline coach, not the LLM" in w.value]
    assert "LLM\\_DAILY\\_BUDGET\\_USD=0.10" in marked

    app.switch_page("pages/history.py").run()
    assert list(app.dataframe[0].value["Source"]) == ["budget (offline: LLM budget spent)", "llm"]

    app.switch_page("pages/monitoring.py").run()
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["LLM spend today, of the budget"] == f"{format_dollars(CALL_USD)} of {format_dollars(0.1)}"
    assert metrics["LLM spend this month, of the budget"] == f"{format_dollars(CALL_USD)} of {format_dollars(10)}"
    assert any("LLM budget spent" in e.value and "offline coach" in e.value for e in app.error)


@pytest.mark.process
def test_two_instances_together_overshoot_the_budget_by_at_most_one_generation_each(
    shared_database: Shared, fake_openai: FakeOpenAI, profile_file: Path
) -> None:
    # $1.00 is spent after three calls ($1.26); an instance alone makes exactly those three.
    # Two, each starting a generation while the other's is in flight, may make one more.
    fake_openai.reset(Behaviour(delay_seconds=0.5))
    env = {**budget_env(fake_openai, LLM_DAILY_BUDGET_USD="1.0"), **shared_database.env()}
    results: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    def instance(name: str) -> None:
        for n in range(4):
            args = ("generate", "--user-id", f"{name}{n}", "--profile", str(profile_file))
            out, err = start_cli(shared_database.url, *args, **env).communicate(timeout=120)
            results[name].append(json.loads(out) if out else {"error": err.decode()})

    threads = [threading.Thread(target=instance, args=(name,)) for name in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    served = [r for rs in results.values() for r in rs]
    assert all("error" not in r for r in served), served
    by_llm = [r for r in served if r["budget_reached"] is None]
    assert all(r["model"] == MODEL for r in by_llm)
    assert 3 <= len(by_llm) == fake_openai.calls <= 3 + 1, [r["model"] for r in served]
    assert all(r["model"] == OfflineGenerator.identity.model for r in served if r["budget_reached"])


def test_a_spend_the_database_cannot_tell_counts_as_spent(faults: Faults, fake_openai: FakeOpenAI) -> None:
    faults.deny("generation_stats_hourly", "SELECT")  # the request log's rollup, read for spend only
    fallback = ask(budget_service(faults.engine, fake_openai, llm_daily_budget_usd=100.0), "u1")
    assert fake_openai.calls == 0 and fallback.budget_reached is not None
    assert fallback.budget_reached.startswith("the LLM spend could not be read to check the budget (")
