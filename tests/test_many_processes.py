"""Single-flight across processes: separate app instances (real `python -m core` processes)
sharing one database: a SQLite file, PostgreSQL, or PostgreSQL behind PgBouncer in
transaction pooling mode."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from core.operations.rollout import live as rollout_live
from core.operations.rollout import plan as rollout_plan
from core.operations.rollout import reports
from core.operations.rollout import start as rollout_start
from core.store.db import make_engine
from core.store.schema import generation_events, generation_leases, rollout_programs
from tests.conftest import Shared
from tests.fake_openai import Behaviour, FakeOpenAI
from tests.helpers import start_cli
from tests.operations.test_rollout import CANDIDATE, CURRENT, USERS, app_service, serve, settings_for

pytestmark = pytest.mark.process

# Short, so that a killed holder's key is free again soon; renewed every 0.67 s meanwhile.
LEASE_SECONDS = 2.0


def _generate(shared: Shared, profile: Path, fake_openai: FakeOpenAI, user_id: str = "shared-user") -> Any:
    env = {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_MODEL": "gpt-test",
        "GENERATION_LEASE_SECONDS": str(LEASE_SECONDS),
        **shared.env(),
    }
    return start_cli(shared.url, "generate", "--user-id", user_id, "--profile", str(profile), "--paid", **env)


def _scalars(url: str, query: Any) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(query).scalars())
    finally:
        engine.dispose()


def _count_leases(url: str) -> int:
    return int(_scalars(url, select(func.count()).select_from(generation_leases))[0])


def test_four_processes_generating_the_same_profile_make_one_llm_call(
    shared_database: Shared, fake_openai: FakeOpenAI, profile_file: Path
) -> None:
    # Long enough a generation that all four processes, started together, ask during it.
    fake_openai.reset(Behaviour(delay_seconds=4.0))
    processes = [_generate(shared_database, profile_file, fake_openai) for _ in range(4)]
    finished = [p.communicate(timeout=60) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], [err.decode() for _, err in finished]
    assert sorted(json.loads(out)["cache_hit"] for out, _ in finished) == [False, True, True, True]
    assert fake_openai.calls == 1
    outcomes = _scalars(shared_database.url, select(generation_events.c.outcome))
    assert sorted(outcomes) == ["hit", "hit", "hit", "miss"]
    # The lease went with the generation.
    assert _count_leases(shared_database.url) == 0


def test_a_holder_killed_mid_generation_blocks_its_key_no_longer_than_its_lease(
    shared_database: Shared, fake_openai: FakeOpenAI, profile_file: Path
) -> None:
    fake_openai.reset(Behaviour(delay_seconds=120.0))
    holder = _generate(shared_database, profile_file, fake_openai)
    deadline = time.monotonic() + 30
    while _count_leases(shared_database.url) == 0 or fake_openai.calls == 0:
        assert holder.poll() is None and time.monotonic() < deadline, holder.communicate()[1].decode()
        time.sleep(0.1)
    holder.send_signal(signal.SIGKILL)
    holder.wait()

    fake_openai.reset(Behaviour())
    killed_at = time.monotonic()
    successor = _generate(shared_database, profile_file, fake_openai)
    # Started with it: the same imports on a machine as loaded, and no database. What the
    # successor took beyond it is what it waited for the key (and generated, at once).
    baseline = start_cli(shared_database.url, "generate", "--help")
    baseline.communicate(timeout=60)
    started = time.monotonic() - killed_at
    out, err = successor.communicate(timeout=60)
    waited = time.monotonic() - killed_at - started
    assert successor.returncode == 0, err.decode()
    assert json.loads(out)["cache_hit"] is False
    assert fake_openai.calls == 1
    # The lease and the polls: far below the generation's 120 s.
    assert waited < LEASE_SECONDS + 10, f"the key stayed blocked {waited:.1f} s after its holder died"


def _rollout_env(shared: Shared, fake_openai: FakeOpenAI, model: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_MODEL": model,
        "GENERATION_LEASE_SECONDS": str(LEASE_SECONDS),
        **shared.env(),
    }


def _with_three_users(url: str, fake_openai: FakeOpenAI) -> Engine:
    engine = make_engine(url)
    service = app_service(engine, settings_for(url, fake_openai))
    for user in USERS:
        serve(service, user)
    fake_openai.reset()
    return engine


def test_a_live_prewarm_killed_mid_run_is_given_up_once_its_lease_lapses_and_says_so(
    shared_database: Shared, fake_openai: FakeOpenAI
) -> None:
    engine = _with_three_users(shared_database.url, fake_openai)
    try:
        fake_openai.reset(Behaviour(mode="hang"))  # every call stays in flight
        env = _rollout_env(shared_database, fake_openai, CURRENT)
        runner = start_cli(shared_database.url, "rollout", "start", "--live", "--model", CANDIDATE, **env)
        deadline = time.monotonic() + 30
        while fake_openai.calls < len(USERS):
            assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()[1].decode()
            time.sleep(0.1)
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        fake_openai.reset()

        # `rollout status` from cron: once the run's lease has lapsed, what it left pending is given up.
        deadline = time.monotonic() + 60
        while True:
            status = start_cli(shared_database.url, "rollout", "status", **env)
            out, err = status.communicate(timeout=60)
            assert status.returncode == 0, err.decode()
            if json.loads(out)["given_up_runs"]:
                break
            assert time.monotonic() < deadline, "the killed run's requests were never given up"
        [said] = err.decode().splitlines()
        assert said.startswith("note: rollout ") and "3 requests given up: the run that asked for it stopped" in said
        report = json.loads(out)["rollouts"][0]
        assert report["states"] == {"failed": 3} and report["phase"] != "in progress"
        assert {p["error"] for p in report["problems"]} == {rollout_live.GIVEN_UP}
        assert (
            rollout_plan.plan(
                engine,
                settings_for(shared_database.url, fake_openai),
                rollout_plan.candidate(settings_for(shared_database.url, fake_openai), CANDIDATE),
            ).count
            == 3
        )
    finally:
        engine.dispose()


WAITING_ON_HISTORY = text(
    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'training_programs'::regclass"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def test_a_process_killed_between_claiming_a_staged_program_and_handing_it_out_leaves_it_staged(
    pg_url: str, fake_openai: FakeOpenAI, profile_file: Path
) -> None:
    engine = _with_three_users(pg_url, fake_openai)
    try:
        settings = settings_for(pg_url, fake_openai)
        rollout_start.start(engine, settings, rollout_plan.candidate(settings, CANDIDATE), actor="cli", live=True)
        fake_openai.reset()
        blocker = engine.connect()
        # The hand-out's history row waits on this lock: the process is held right after its claim.
        blocker.execute(text("LOCK TABLE training_programs IN EXCLUSIVE MODE"))
        env = _rollout_env(Shared(pg_url), fake_openai, CANDIDATE)
        taker = start_cli(pg_url, "generate", "--user-id", "u1", "--profile", str(profile_file), **env)
        deadline = time.monotonic() + 30
        while not _scalars(pg_url, WAITING_ON_HISTORY)[0]:
            assert taker.poll() is None and time.monotonic() < deadline, taker.communicate()[1].decode()
            time.sleep(0.1)
        taker.send_signal(signal.SIGKILL)
        taker.wait()
        blocker.rollback()
        blocker.close()

        used = select(func.count()).select_from(rollout_programs).where(rollout_programs.c.used_at.is_not(None))
        assert _scalars(pg_url, used) == [0]
        switched = app_service(engine, settings_for(pg_url, fake_openai, CANDIDATE))
        result = serve(switched, "u1")
        assert result.prewarmed_by is not None and fake_openai.calls == 0
        [summary] = reports.summaries(engine, settings)
        assert summary.used == 1
    finally:
        engine.dispose()
