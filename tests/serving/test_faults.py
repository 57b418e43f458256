"""Real faults in real components: a restarting PostgreSQL, a database that is gone,
cleanup racing hits, a history table that refuses writes (seen from the page), an instance
killed between writes."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url
from streamlit.testing.v1 import AppTest

from core.serving.service import ProgramService
from core.settings import Settings
from core.store.db import head_revision, make_engine
from core.store.entries import delete_expired
from core.store.schema import ai_coach_cache, training_programs
from testkit.counting import CountingGenerator
from testkit.pg_server import PostgresServer, free_port
from tests.conftest import CliRun, Faults, Shared
from tests.fake_openai import PROMPT_TOKENS, FakeOpenAI
from tests.helpers import PROFILE, count_rows, insert_entries, start_cli
from tests.pages.test_pages import fill, submit


def test_postgres_restarting_under_the_app_costs_no_request(pg: PostgresServer, pg_url: str) -> None:
    engine = make_engine(pg_url)
    service = ProgramService(engine=engine, generator=CountingGenerator())
    service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False)

    pg.restart()  # every pooled connection is now dead
    pg.wait_ready()

    again = service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False)
    assert again.cache_hit and again.training_program_id is not None and not again.warnings
    engine.dispose()


def test_a_database_that_is_gone_still_yields_the_program_and_leaks_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"postgresql+psycopg://coach:hunter2-secret@127.0.0.1:{free_port()}/coach"
    engine = make_engine(url)
    service = ProgramService(engine=engine, generator=CountingGenerator(), lock_wait_seconds=2)
    with caplog.at_level(logging.DEBUG):
        result = service.generate(user_id="u1", onboarding_responses=PROFILE, has_paid_access=False)

    assert result.program["weeks"] and result.miss_reason == "cache_unavailable"
    assert result.history_error and result.unsaved is not None
    assert "hunter2" not in result.history_error
    assert "hunter2" not in caplog.text and "hunter2" not in repr(result)
    assert "hunter2" not in Settings(database_url=url).describe_database()
    assert Settings(database_url=url).describe_database() == f"PostgreSQL 127.0.0.1:{engine.url.port}/coach"
    engine.dispose()


def test_cleanup_while_hits_are_served_fails_no_request_and_keeps_valid_entries(engine: Engine) -> None:
    service = ProgramService(engine=engine, generator=CountingGenerator())
    valid = service.generate(user_id="busy-user", onboarding_responses=PROFILE, has_paid_access=False)
    insert_entries(engine, [f"program:uold{i}:paidfalse:dexpired" for i in range(20_000)], expired=True)
    errors: list[BaseException] = []
    hits = 0
    cleaning = threading.Event()

    def serve_hits() -> None:
        nonlocal hits
        cleaning.wait()
        while cleaning.is_set():
            try:
                result = service.generate(user_id="busy-user", onboarding_responses=PROFILE, has_paid_access=False)
                assert result.cache_hit and result.training_program_id is not None
                hits += 1
            except BaseException as exc:  # collected: any failure fails the test below
                errors.append(exc)
                return

    reader = threading.Thread(target=serve_hits)
    reader.start()
    cleaning.set()
    try:
        removal = delete_expired(engine, actor="test", batch_size=500)
    finally:
        cleaning.clear()
        reader.join()

    assert errors == []
    assert hits > 0 and removal.deleted == 20_000
    with engine.connect() as connection:
        assert connection.execute(select(ai_coach_cache.c.cache_key)).scalars().all() == [valid.cache_key]


@pytest.fixture
def restricted_app(pg_faults: Faults, app_test: Callable[..., AppTest]) -> AppTest:
    return app_test(pg_faults.url).run()


def test_a_failed_history_save_keeps_the_program_on_screen_and_can_be_retried(
    restricted_app: AppTest, pg_faults: Faults
) -> None:
    pg_faults.deny("training_programs", "INSERT")
    submit(fill(restricted_app))

    assert "could not be saved to history" in restricted_app.error[0].value
    assert {m.label: m.value for m in restricted_app.metric}["Saved as program"] == "not saved"
    assert restricted_app.button_group[0].value == 1  # the program is shown, week 1 first
    assert count_rows(pg_faults.engine, training_programs) == 0

    retry = next(b for b in restricted_app.button if b.label == "Retry saving to history")
    retry.click().run()
    assert "Saving failed again" in restricted_app.error[-1].value  # still refused: nothing lost

    pg_faults.allow("training_programs", "INSERT")
    next(b for b in restricted_app.button if b.label == "Retry saving to history").click().run()
    assert {m.label: m.value for m in restricted_app.metric}["Saved as program"] == "#1"
    assert not restricted_app.error
    assert count_rows(pg_faults.engine, training_programs) == 1


@pytest.mark.process
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_instances_starting_together_on_an_empty_database_all_start(
    backend: str, pg: PostgresServer, tmp_path: Path
) -> None:
    """Three instances' migrations at once on a database with no tables: on SQLite the
    migration waits for the write lock, on PostgreSQL for an advisory lock."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/fresh.db"
    else:
        name = f"fresh_{uuid.uuid4().hex[:8]}"
        pg.admin(f"CREATE DATABASE {name}")
        url = pg.url(name)
    processes = [start_cli(url, "migrate") for _ in range(3)]
    finished = [p.communicate(timeout=60) for p in processes]
    if backend == "postgresql":
        pg.admin(f"DROP DATABASE {name} WITH (FORCE)")
    assert [p.returncode for p in processes] == [0, 0, 0], [err.decode() for _, err in finished]
    assert {json.loads(out)["revision"] for out, _ in finished} == {head_revision()}


@pytest.fixture(params=["postgresql", "pgbouncer"])
def pg_shared(request: pytest.FixtureRequest, pg: PostgresServer, pg_url: str) -> Shared:
    # A backend whose statement waits on a lock notices its client is gone only by this
    # check; without it, the statement of an instance killed while it waited would still run.
    database = make_url(pg_url).database or ""
    pg.admin(f"ALTER DATABASE {database} SET client_connection_check_interval = '100ms'")
    if request.param == "postgresql":
        return Shared(pg_url)
    return Shared(request.getfixturevalue("pooled_url"), migrations_url=pg_url)


def _waiting_on(engine: Engine, table: str) -> int:
    """Lock requests on `table` not granted yet: statements of other sessions waiting for it."""
    query = text(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = :t AND NOT l.granted"
    )
    with engine.connect() as connection:
        return int(connection.execute(query, {"t": table}).scalar_one())


def _until(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {seconds} s"
        time.sleep(0.05)


@pytest.mark.process
def test_an_instance_killed_after_writing_its_entry_leaves_no_entry_whose_generation_is_uncounted(
    pg_shared: Shared,
    pg_url: str,
    fake_openai: FakeOpenAI,
    cli: Callable[..., CliRun],
    profile_file: Path,
) -> None:
    llm = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": fake_openai.base_url, "OPENAI_MODEL": "gpt-test"}
    args = ("generate", "--user-id", "u1", "--profile", str(profile_file))
    observer = make_engine(pg_url)
    # The history table locked against writes: the instance stops at its first write there,
    # after its entry, until it is killed.
    with observer.connect() as holder, holder.begin():
        holder.execute(text("LOCK TABLE training_programs IN SHARE MODE"))
        instance = start_cli(pg_shared.url, *args, DATABASE_WAIT_SECONDS="600", **llm, **pg_shared.env())
        _until(lambda: _waiting_on(observer, "training_programs") > 0, "waiting on the history table")
        assert fake_openai.calls == 1  # billed
        instance.send_signal(signal.SIGKILL)
        instance.wait()
        _until(lambda: _waiting_on(observer, "training_programs") == 0, "gone from the server")
    assert count_rows(observer, ai_coach_cache) == 0
    observer.dispose()

    # So the next request generates, and what each generation was billed is spent, none saved.
    again = cli(pg_shared.url, *args, **llm, **pg_shared.env())
    assert again.json()["cache_hit"] is False
    stats = cli(pg_shared.url, "stats", **pg_shared.env()).json()
    [generator] = stats["generators"]
    assert (generator["generations"], generator["hits"], generator["prompt_tokens"]) == (1, 0, PROMPT_TOKENS)
