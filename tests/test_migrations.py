from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from core import adoption
from core.db import head_revision, make_engine, migrate
from core.schema import VERSION_TABLE, metadata


def test_migrations_build_the_schema_the_code_queries(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        differences = [d for d in compare_metadata(context, metadata) if not _adoptable(d)]
    assert differences == []


def _adoptable(difference: Any) -> bool:
    """A difference the schema allows on purpose: the ids and user ids of the adoptable
    tables are typed by the table (AsStored), and columns Coach Cache adds to an adopted
    table are nullable there, while the tables it creates itself declare them NOT NULL."""
    if isinstance(difference, tuple) and difference[0] == "remove_table":
        return bool(difference[1].name == VERSION_TABLE)
    kind, _schema, table, _column = difference[0][:4]
    return kind in ("modify_type", "modify_nullable") and table in adoption.NEEDED


def test_migrate_is_idempotent_and_reaches_head(engine: Engine) -> None:
    assert migrate(engine) == head_revision() == migrate(engine)


def test_programs_are_jsonb_on_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    columns = {c["name"]: c["type"] for c in inspect(engine).get_columns("ai_coach_cache")}
    engine.dispose()
    assert type(columns["data"]).__name__ == "JSONB"
