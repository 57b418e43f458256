"""Adopting the product's existing `ai_coach_cache` and `training_programs` tables, as
ADR-049 decides, instead of creating them.

Such a table may differ from the ones Coach Cache creates the way a Supabase schema does:
uuid ids and user ids, columns of other features, rows of other features. Adoption checks
that every column Coach Cache reads and writes has a type it can use, and adds the missing
ones as additive changes only: nullable or defaulted columns (no table rewrite on
PostgreSQL 11+) and indexes. It never drops, renames, retypes or rewrites a column or a row.
A table that cannot be used as it is refuses the whole migration, listing every reason."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import JSONB

from core.prices import TOKEN_FIELDS
from core.store.schema import UTCDateTime

TypeCheck = Callable[[Any, str], bool]


def _text(kind: Any, _dialect: str) -> bool:
    return isinstance(kind, sa.String)


def _uuid(kind: Any, _dialect: str) -> bool:
    return isinstance(kind, sa.Uuid)


def _integer(kind: Any, _dialect: str) -> bool:
    return isinstance(kind, sa.Integer)


def _json(kind: Any, dialect: str) -> bool:
    # The cache and the hit's copy into history rely on JSONB on PostgreSQL (ADR-049).
    return isinstance(kind, JSONB) if dialect == "postgresql" else isinstance(kind, sa.JSON)


def _timestamp(kind: Any, dialect: str) -> bool:
    # Without a time zone, PostgreSQL would shift every time by the session's zone.
    return isinstance(kind, sa.DateTime) and (kind.timezone or dialect == "sqlite")


def _number(kind: Any, _dialect: str) -> bool:
    return isinstance(kind, sa.Float | sa.Numeric | sa.Integer)


def _boolean(kind: Any, _dialect: str) -> bool:
    return isinstance(kind, sa.Boolean)


TYPE_NAMES: dict[TypeCheck, str] = {
    _text: "text",
    _uuid: "uuid",
    _integer: "an integer",
    _json: "jsonb",
    _timestamp: "timestamp with time zone",
    _number: "a number",
    _boolean: "boolean",
}


@dataclass(frozen=True)
class Needed:
    """A column Coach Cache uses: the types it can work with, and how it is added to an
    adopted table that lacks it (None: the table cannot be adopted without it)."""

    name: str
    types: tuple[TypeCheck, ...]
    added_as: Callable[[str], sa.Column[Any]] | None = None

    def accepts(self, kind: Any, dialect: str) -> bool:
        return any(check(kind, dialect) for check in self.types)

    def type_names(self) -> str:
        return " or ".join(TYPE_NAMES[check] for check in self.types)


def _nullable(kind: Any) -> Callable[[str], sa.Column[Any]]:
    return lambda name: sa.Column(name, kind, nullable=True)


NEEDED: dict[str, tuple[Needed, ...]] = {
    "ai_coach_cache": (
        Needed("id", (_integer, _uuid)),
        Needed("cache_key", (_text,)),
        Needed("user_id", (_text, _uuid)),
        Needed("data", (_json,)),
        Needed("expires_at", (_timestamp,)),
        Needed("onboarding_hash", (_text,), _nullable(sa.String(64))),
        Needed("created_at", (_timestamp,), _nullable(UTCDateTime())),
        Needed("updated_at", (_timestamp,), _nullable(UTCDateTime())),
        Needed("size_bytes", (_integer,), lambda name: sa.Column(name, sa.Integer, nullable=False, server_default="0")),
    ),
    "training_programs": (
        Needed("id", (_integer, _uuid)),
        Needed("user_id", (_text, _uuid)),
        Needed("program", (_json,)),
        Needed("created_at", (_timestamp,)),
        Needed("onboarding_responses", (_json,), _nullable(sa.JSON().with_variant(JSONB(), "postgresql"))),
        Needed("has_paid_access", (_boolean,), _nullable(sa.Boolean)),
        Needed("source", (_text,), _nullable(sa.String(8))),
        Needed("cache_key", (_text,), _nullable(sa.String(512))),
        Needed("latency_ms", (_number,), _nullable(sa.Float)),
        Needed("model", (_text,), _nullable(sa.String(200))),
        # What each program's generation was billed, a column per kind of token (core.prices.Billed).
        *(Needed(name, (_integer,), _nullable(sa.Integer)) for name in TOKEN_FIELDS),
    ),
}
# The indexes Coach Cache's queries use; an adopted table gets those it lacks.
INDEXES: dict[str, dict[str, tuple[str, ...]]] = {
    "ai_coach_cache": {
        "ix_ai_coach_cache_expires_at": ("expires_at",),
        "ix_ai_coach_cache_user_id_created_at": ("user_id", "created_at"),
    },
    "training_programs": {
        "ix_training_programs_created_at": ("created_at", "id"),
        "ix_training_programs_user_id_created_at": ("user_id", "created_at", "id"),
    },
}


class SchemaRefused(RuntimeError):
    """Existing tables Coach Cache cannot use as they are; nothing was changed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("existing tables cannot be adopted, nothing was changed: " + "; ".join(problems))


def problems(connection: Connection, table: str) -> list[str]:
    """Why the existing `table` cannot be adopted (empty if it can)."""
    inspector = sa.inspect(connection)
    dialect = connection.dialect.name
    columns = {c["name"]: c for c in inspector.get_columns(table)}
    found: list[str] = []
    for needed in NEEDED[table]:
        column = columns.get(needed.name)
        if column is None:
            if needed.added_as is None:
                found.append(f"{table}.{needed.name} is missing")
        elif not needed.accepts(column["type"], dialect):
            found.append(f"{table}.{needed.name} is {column['type']}, not {needed.type_names()}")
    written = {n.name for n in NEEDED[table]} - {"id"}
    for name, column in columns.items():
        if name not in written and not column["nullable"] and not _fills_itself(column, inspector, table, dialect):
            found.append(f"{table}.{name} is NOT NULL without a default, and Coach Cache does not write it")
    if table == "ai_coach_cache" and not is_unique(inspector, table, "cache_key"):
        found.append("ai_coach_cache.cache_key is not unique (the upsert needs a unique index or constraint)")
    return found


def _fills_itself(column: Any, inspector: Any, table: str, dialect: str) -> bool:
    if column.get("default") is not None or column.get("identity") or column.get("computed"):
        return True
    # SQLite fills an INTEGER PRIMARY KEY itself.
    primary = inspector.get_pk_constraint(table)["constrained_columns"]
    return dialect == "sqlite" and primary == [column["name"]] and isinstance(column["type"], sa.Integer)


def is_unique(inspector: Any, table: str, column: str) -> bool:
    candidates = [inspector.get_pk_constraint(table)["constrained_columns"]]
    candidates += [c["column_names"] for c in inspector.get_unique_constraints(table)]
    candidates += [i["column_names"] for i in inspector.get_indexes(table) if i["unique"]]
    return [column] in candidates


def adopt(connection: Connection, table: str) -> None:
    """Add to the existing `table` the columns and indexes Coach Cache needs (inside an
    Alembic migration, after `problems` found none)."""
    inspector = sa.inspect(connection)
    existing = {c["name"] for c in inspector.get_columns(table)}
    for needed in NEEDED[table]:
        if needed.name not in existing and needed.added_as is not None:
            op.add_column(table, needed.added_as(needed.name))
    indexed = {tuple(i["column_names"]) for i in inspector.get_indexes(table)}
    for name, columns in INDEXES[table].items():
        if columns not in indexed:
            op.create_index(name, table, list(columns))


def uuid_user_ids(connection: Connection) -> bool:
    """Whether the adopted tables store user ids as uuid (a non-UUID id is then bad input)."""
    inspector = sa.inspect(connection)
    return any(
        isinstance(c["type"], sa.Uuid)
        for table in NEEDED
        if inspector.has_table(table)
        for c in inspector.get_columns(table)
        if c["name"] == "user_id"
    )
