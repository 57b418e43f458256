from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from core.store import adoption
from core.store.db import head_revision, make_engine, migrate
from core.store.schema import VERSION_TABLE, metadata
from testkit.pg_server import PostgresServer


def test_migrations_build_the_schema_the_code_queries(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        differences = [d for d in compare_metadata(context, metadata) if not _adoptable(d)]
    assert differences == []


def _adoptable(difference: Any) -> bool:
    """A difference the schema allows on purpose: the ids and user ids of the adoptable
    tables are typed by the table (AsStored), and so are the rejections' references to
    history ids; columns Coach Cache adds to an adopted table are nullable there, while
    the tables it creates itself declare them NOT NULL."""
    if isinstance(difference, tuple) and difference[0] == "remove_table":
        return bool(difference[1].name == VERSION_TABLE)
    kind, _schema, table, column = difference[0][:4]
    if (kind, table, column) == ("modify_type", "program_rejections", "training_program_id"):
        return True
    return kind in ("modify_type", "modify_nullable") and table in adoption.NEEDED


def test_migrate_is_idempotent_and_reaches_head(engine: Engine) -> None:
    assert migrate(engine) == head_revision() == migrate(engine)


def test_programs_are_jsonb_on_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    columns = {c["name"]: c["type"] for c in inspect(engine).get_columns("ai_coach_cache")}
    engine.dispose()
    assert type(columns["data"]).__name__ == "JSONB"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database no migration has touched (the PostgreSQL template is already at head)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    pg: PostgresServer = request.getfixturevalue("pg")
    name = f"empty_{uuid.uuid4().hex[:10]}"
    pg.admin(f"CREATE DATABASE {name}")
    yield pg.url(name)
    pg.admin(f"DROP DATABASE {name} WITH (FORCE)")


def test_earlier_offline_programs_are_marked_offline_and_nothing_is_invented(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    migrate(engine, "0005")
    rows = [("offline-rules-v1", "llm"), ("gpt-4o-mini", "llm"), (None, "cache")]
    with engine.begin() as connection:
        for model, source in rows:
            connection.execute(
                text(
                    "INSERT INTO training_programs (user_id, program, onboarding_responses, has_paid_access,"
                    " source, cache_key, created_at, latency_ms, model)"
                    " VALUES ('u1', '{}', '{}', false, :source, 'k', CURRENT_TIMESTAMP, 1, :model)"
                ),
                {"model": model, "source": source},
            )
    migrate(engine)
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT model, source, generator_version FROM training_programs ORDER BY id")
        ).all()
    engine.dispose()
    assert [tuple(r) for r in found] == [
        ("offline-rules-v1", "offline", None),
        ("gpt-4o-mini", "llm", None),
        (None, "cache", None),
    ]


def test_cached_and_reasoning_tokens_are_added_unknown_for_what_came_before(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    migrate(engine, "0010")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO generation_events (created_at, user_id, cache_key, outcome, latency_ms, prompt_tokens,"
                " completion_tokens) VALUES (CURRENT_TIMESTAMP, 'u1', 'program:k', 'miss', 1, 400, 1000)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO generation_stats_hourly VALUES (CURRENT_TIMESTAMP, 'miss', 10, '', '', 1, 1.0, 400, 1000,"
                " 0, 0, 0, 0, 0, 0)"
            )
        )
    migrate(engine)
    with engine.connect() as connection:
        event = connection.execute(
            text("SELECT cached_tokens, reasoning_tokens, saved_cached_tokens FROM generation_events")
        ).one()
        rolled = connection.execute(
            text("SELECT cached_tokens, reasoning_tokens, saved_cached_tokens FROM generation_stats_hourly")
        ).one()
        columns = {
            table: {c["name"]: c["nullable"] for c in inspect(connection).get_columns(table)}
            for table in ("ai_coach_cache", "training_programs", "generation_events")
        }
    engine.dispose()
    # Not reported is not zero on an event; a rolled-up hour's sums of them are 0, as such events sum to.
    assert tuple(event) == (None, None, None) and tuple(rolled) == (0, 0, 0)
    for table, nullable in columns.items():
        assert nullable["cached_tokens"] and nullable["reasoning_tokens"], table


def test_a_hits_saved_reasoning_tokens_are_added_unknown_for_what_came_before(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    migrate(engine, "0019")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO generation_events (created_at, user_id, cache_key, outcome, latency_ms,"
                " saved_prompt_tokens, saved_completion_tokens) VALUES (CURRENT_TIMESTAMP, 'u1', 'program:k', 'hit',"
                " 1, 400, 1000)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO generation_stats_hourly (hour, outcome, latency_bin_ms, generator_version, model,"
                " requests, latency_ms_sum, prompt_tokens, completion_tokens, saved_prompt_tokens,"
                " saved_completion_tokens, hits_without_tokens, cache_read_errors, cache_write_errors,"
                " history_errors) VALUES (CURRENT_TIMESTAMP, 'hit', 10, 'g', 'm', 1, 1.0, 0, 0, 400, 1000, 0, 0, 0, 0)"
            )
        )
    migrate(engine)
    with engine.connect() as connection:
        event = connection.execute(text("SELECT saved_prompt_tokens, saved_reasoning_tokens FROM generation_events"))
        rolled = connection.execute(
            text("SELECT saved_prompt_tokens, saved_reasoning_tokens FROM generation_stats_hourly")
        )
        found = (tuple(event.one()), tuple(rolled.one()))
    engine.dispose()
    # Not reported is not zero on an event; a rolled-up hour's sum of them is 0, as such events sum to.
    assert found == ((400, None), (400, 0))


def test_hours_rolled_up_before_miss_reasons_are_kept_with_none_recorded(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    migrate(engine, "0014")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO generation_stats_hourly (hour, outcome, latency_bin_ms, generator_version, model,"
                " requests, latency_ms_sum, prompt_tokens, completion_tokens, saved_prompt_tokens,"
                " saved_completion_tokens, hits_without_tokens, cache_read_errors, cache_write_errors,"
                " history_errors) VALUES (CURRENT_TIMESTAMP, 'miss', 10, 'g', 'm', 7, 1.0, 400, 1000, 0, 0, 0, 0, 0, 0)"
            )
        )
    migrate(engine)
    with engine.connect() as connection:
        rolled = connection.execute(text("SELECT outcome, requests, miss_reason FROM generation_stats_hourly")).one()
        key = inspect(connection).get_pk_constraint("generation_stats_hourly")["constrained_columns"]
    engine.dispose()
    # The request log may be pruned since: the rollup's rows are all that is left of those hours.
    assert tuple(rolled) == ("miss", 7, "") and key[-1] == "miss_reason"
