from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from core.db import head_revision, make_engine, migrate
from core.schema import metadata


def test_migrations_build_the_schema_the_code_queries(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_migrate_is_idempotent_and_reaches_head(engine: Engine) -> None:
    assert migrate(engine) == head_revision() == migrate(engine)


def test_programs_are_jsonb_on_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    columns = {c["name"]: c["type"] for c in inspect(engine).get_columns("ai_coach_cache")}
    engine.dispose()
    assert type(columns["data"]).__name__ == "JSONB"
