"""The tables, as SQLAlchemy Core objects. Their names and columns are a contract: other
tools read them. Alembic revisions in `core/store/migrations` create them; this module only
describes them for queries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    FetchedValue,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    cast,
    false,
    func,
    literal,
    text,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import UserDefinedType

from core.prices import TOKEN_FIELDS

CACHE_KEY_PREFIX = "program:"
# Alembic's own `alembic_version` may be the product's: Coach Cache records its state apart.
VERSION_TABLE = "coach_cache_alembic_version"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both databases.

    SQLite has no time zone type: values are stored as naive UTC text (which sorts and
    compares correctly) and come back tagged as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class AsStored(UserDefinedType[Any]):
    """A column whose type an adopted table decides: `id` may be an integer or a uuid,
    `user_id` text or a uuid. Values are bound untyped, so PostgreSQL reads them as the
    column's own type (SQLAlchemy would cast them to VARCHAR or BIGINT), and uuids come
    back as text. `ddl` is the type Coach Cache gives the column when it creates the table."""

    cache_ok = True

    def __init__(self, ddl: str) -> None:
        self.ddl = ddl

    def get_col_spec(self, **_kw: Any) -> str:
        return self.ddl

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        return lambda value: value if value is None or isinstance(value, int | str) else str(value)


# An id of a training_programs row: an integer in tables Coach Cache created, a uuid as
# text in a Supabase-style table it adopted.
ProgramId = int | str

# JSONB on PostgreSQL (indexable, compact, validated by the server), JSON text elsewhere.
JsonDocument = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()


# The prefix of the columns of what a hit saved: its entry's generation's tokens, by kind.
SAVED = "saved_"


def billed_columns(prefix: str = "") -> list[Column[Any]]:
    """The columns of what one generation was billed, one per kind of token (core.prices.Billed),
    each named after `prefix`, for every table that records a generation's tokens (NULL: not
    reported)."""
    return [Column(prefix + name, Integer, nullable=True) for name in TOKEN_FIELDS]


def billed_sums(prefix: str = "") -> list[Column[Any]]:
    """The rollup's sums of those columns; hours rolled up before a kind was recorded hold 0,
    as events that do not say sum to."""
    return [Column(prefix + name, BigInteger, nullable=False, server_default="0") for name in TOKEN_FIELDS]


ai_coach_cache = Table(
    "ai_coach_cache",
    metadata,
    Column("id", AsStored("BIGINT"), primary_key=True, server_default=FetchedValue()),
    Column("cache_key", String(512), nullable=False, unique=True),
    Column("user_id", AsStored("VARCHAR(128)"), nullable=False),
    Column("data", JsonDocument, nullable=False),
    Column("onboarding_hash", String(64), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("size_bytes", Integer, nullable=False, server_default="0"),
    # The generator identity that made the entry (NULL: made before it was recorded).
    Column("model", String(200), nullable=True),
    Column("generator_version", String(64), nullable=True),
    # What the generation that made the entry was billed: what each hit on it saves.
    *billed_columns(),
    Index("ix_ai_coach_cache_expires_at", "expires_at"),
    Index("ix_ai_coach_cache_user_id_created_at", "user_id", "created_at"),
)

# In an adopted table, the columns Coach Cache added are NULL in the rows written before.
training_programs = Table(
    "training_programs",
    metadata,
    Column("id", AsStored("BIGINT"), primary_key=True, server_default=FetchedValue()),
    Column("user_id", AsStored("VARCHAR(128)"), nullable=False),
    Column("program", JsonDocument, nullable=False),
    Column("onboarding_responses", JsonDocument, nullable=True),
    Column("has_paid_access", Boolean, nullable=True),
    Column("source", String(8), nullable=True),
    Column("cache_key", String(512), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("latency_ms", Float, nullable=True),
    Column("model", String(200), nullable=True),
    Column("generator_version", String(64), nullable=True),
    *billed_columns(),
    # A recall of the program (core/operations/recall.py): when, why, by whom; NULL while never recalled.
    Column("recalled_at", UTCDateTime(), nullable=True),
    Column("recall_reason", Text, nullable=True),
    Column("recalled_by", String(320), nullable=True),
    Index("ix_training_programs_created_at", "created_at", "id"),
    Index("ix_training_programs_user_id_created_at", "user_id", "created_at", "id"),
)

generation_events = Table(
    "generation_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("cache_key", String(512), nullable=False),
    Column("outcome", String(8), nullable=False),
    Column("miss_reason", String(32), nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("llm_latency_ms", Float, nullable=True),
    # What the generation was billed (NULL: the server did not say).
    *billed_columns(),
    Column("cache_read_error", Boolean, nullable=False, server_default=false()),
    Column("cache_write_error", Boolean, nullable=False, server_default=false()),
    Column("history_error", Boolean, nullable=False, server_default=false()),
    Column("error", Text, nullable=True),
    # 0-63 from the key's last digest character: a uniform sample of keys is a range of it.
    Column("key_sample", SmallInteger, nullable=False, server_default="0"),
    # A miss that wrote the cache: until when its entry was valid.
    Column("entry_expires_at", UTCDateTime(), nullable=True),
    # The generator of the program served: the one asked (miss, error), or the one that made
    # the entry (hit), whose generation's tokens are what the hit saved.
    Column("generator_version", String(64), nullable=True),
    Column("model", String(200), nullable=True),
    # What a hit saved: its entry's generation's tokens.
    *billed_columns(SAVED),
    # A generation's attempts (a repair is one more) and the core.fit rules any broke, comma-separated.
    Column("attempts", SmallInteger, nullable=True),
    Column("rules_broken", String(200), nullable=True),
    Index("ix_generation_events_created_at", "created_at"),
    Index("ix_generation_events_key_sample", "key_sample", "cache_key", "created_at", "id"),
    # The few generations that broke a fit rule or the contract, for core.fit_report.
    Index(
        "ix_generation_events_rules_broken",
        "created_at",
        postgresql_where=text("rules_broken IS NOT NULL"),
        sqlite_where=text("rules_broken IS NOT NULL"),
    ),
)

# Requests per hour, outcome, latency bin and generator, rolled up from generation_events
# once an hour has settled, so monitoring reads a few thousand rows instead of millions.
generation_stats_hourly = Table(
    "generation_stats_hourly",
    metadata,
    Column("hour", UTCDateTime(), primary_key=True),
    Column("outcome", String(8), primary_key=True),
    Column("latency_bin_ms", Integer, primary_key=True),  # upper edge; -1 for the open last bin
    # '' where the events do not say (recorded before generators were).
    Column("generator_version", String(64), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("requests", Integer, nullable=False),
    Column("latency_ms_sum", Float, nullable=False),
    *billed_sums(),
    # Hits: the tokens of the generations that made the entries served (what they saved),
    # and how many hits served an entry whose tokens were not recorded.
    *billed_sums(SAVED),
    Column("hits_without_tokens", Integer, nullable=False),
    Column("cache_read_errors", Integer, nullable=False),
    Column("cache_write_errors", Integer, nullable=False),
    Column("history_errors", Integer, nullable=False),
    # Why the requests were misses ('' for hits, and for hours rolled up before it was recorded).
    Column("miss_reason", String(32), primary_key=True, server_default=""),
)

admin_actions = Table(
    "admin_actions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("actor", String(320), nullable=False),
    Column("action", String(32), nullable=False),
    Column("target", String(512), nullable=True),
    Column("rows_affected", Integer, nullable=False),
    Column("bytes_reclaimed", BigInteger, nullable=False, server_default="0"),
    Index("ix_admin_actions_created_at", "created_at"),
)


# What last happened to each program key's cache entry, recorded when it happened: one row
# per key, replaced by each write, failed write, invalidation or cleanup of its entry. Miss
# reasons are read from it, never from the request log (core/store/fates.py).
cache_entry_fates = Table(
    "cache_entry_fates",
    metadata,
    Column("cache_key", String(512), primary_key=True),
    Column("fate", String(16), nullable=False),  # written | not_cached | invalidated | rejected | recalled | expired
    Column("recorded_at", UTCDateTime(), nullable=False),
    # Until when the entry was (or would have been) valid; NULL when no entry was written.
    Column("entry_expires_at", UTCDateTime(), nullable=True),
    # Who removed it (an admin's e-mail, `dashboard` or `cli`; for cleanup, who ran it).
    Column("actor", String(320), nullable=True),
)


# Coaches' rejections of programs handed out: which history row, who, when (by the
# database's clock), why. Cleanup never touches them; a history row deleted by the product
# takes its rejections with it.
program_rejections = Table(
    "program_rejections",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    # Typed as training_programs.id is (an integer, or an adopted table's uuid).
    Column(
        "training_program_id",
        AsStored("BIGINT"),
        ForeignKey("training_programs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("cache_key", String(512), nullable=True),  # the history row's, when it has one
    Column("rejected_by", String(320), nullable=False),
    Column("rejected_at", UTCDateTime(), nullable=False),
    Column("category", String(32), nullable=False),
    Column("note", Text, nullable=True),
    Index("ix_program_rejections_training_program_id", "training_program_id"),
)


# A generator change prepared ahead (core/operations/rollout/): a trial of a candidate model on recent
# profiles, or a pre-warm of the cache for it, through OpenAI's Batch API or live calls.
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),  # trial | batch | live
    Column("model", String(200), nullable=False),
    Column("generator_version", String(64), nullable=False),  # the candidate's identity
    Column("created_by", String(320), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("requested", Integer, nullable=False),  # programs asked for
    Column("error", Text, nullable=True),  # why (part of) it could not be submitted
)

# Each Batch API job of a rollout (a rollout of more than 50,000 lines or 200 MB has several).
rollout_batches = Table(
    "rollout_batches",
    metadata,
    Column("batch_id", String(128), primary_key=True),
    Column("rollout_id", Id, ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
    Column("input_file_id", String(128), nullable=False),
    Column("lines", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # as OpenAI last said it
    Column("submitted_at", UTCDateTime(), nullable=False),
    Column("checked_at", UTCDateTime(), nullable=True),
    Column("collected_at", UTCDateTime(), nullable=True),
    # Consecutive checks the server answered 404 for it (reset by any other answer).
    Column("not_found_checks", Integer, nullable=False, server_default="0"),
    # When an operator asked for it to be cancelled: its keys may be planned again at once.
    Column("cancel_requested_at", UTCDateTime(), nullable=True),
    Index("ix_rollout_batches_rollout_id", "rollout_id"),
)

# One program a rollout asked for: the answers it was asked from, then what came back. A
# pre-warm's valid program is `staged` until a request for its key under the candidate's
# identity takes it as the key's entry (`used_at`); a trial's is `tried`, never served.
rollout_programs = Table(
    "rollout_programs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("rollout_id", Id, ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
    Column("batch_id", String(128), nullable=True),
    Column("cache_key", String(512), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("onboarding_responses", JsonDocument, nullable=False),
    Column("has_paid_access", Boolean, nullable=False),
    Column("generator_version", String(64), nullable=False),
    Column("state", String(8), nullable=False),  # pending | staged | tried | invalid | failed | voided
    Column("model", String(200), nullable=True),
    Column("program", JsonDocument, nullable=True),  # dropped by cleanup once expired
    Column("size_bytes", Integer, nullable=False, server_default="0"),
    Column("error", Text, nullable=True),
    Column("generated_at", UTCDateTime(), nullable=True),
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("latency_ms", Float, nullable=True),
    *billed_columns(),
    Column("used_at", UTCDateTime(), nullable=True),
    # As an event records it (generation_events): the attempts, and the fit rules any broke.
    Column("attempts", SmallInteger, nullable=True),
    Column("rules_broken", String(200), nullable=True),
    Index("ix_rollout_programs_rollout_id_cache_key", "rollout_id", "cache_key", unique=True),
    Index("ix_rollout_programs_staged", "cache_key", "generator_version", "state"),
)


# Who is generating each key right now, until when (renewed while the generation runs).
generation_leases = Table(
    "generation_leases",
    metadata,
    Column("cache_key", String(512), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)


# Each alert rule's state (core/operations/alerts.py), shared by every instance and cron run:
# whether it fires, what it saw, and what the webhook was last told, so that a change is
# POSTed once. A checker claims a message to send until `claimed_until` (by the database's
# clock), so two checkers at once send it once, and one that died is taken over.
alert_states = Table(
    "alert_states",
    metadata,
    Column("rule", String(32), primary_key=True),
    Column("firing", Boolean, nullable=False),
    Column("seen", Text, nullable=False),  # what the rule saw, in words
    Column("figures", JSON, nullable=False),
    Column("checked_at", UTCDateTime(), nullable=False),
    Column("changed_at", UTCDateTime(), nullable=False),  # when it started or stopped firing
    # What the webhook was last told (firing or not); a state that differs is a message to send.
    Column("notified_firing", Boolean, nullable=False),
    Column("claimed_by", String(32), nullable=True),
    Column("claimed_until", UTCDateTime(), nullable=True),
    # Why the last message could not be sent (never the URL); NULL once one is.
    Column("delivery_error", Text, nullable=True),
)


def json_text(name: str, dialect: str) -> Any:
    """A bound JSON column value given as JSON text: PostgreSQL parses it into JSONB itself,
    SQLite stores it as is, and Python never decodes and re-encodes it."""
    raw = bindparam(name, type_=Text)
    return cast(raw, JSONB) if dialect == "postgresql" else raw


def utcnow() -> datetime:
    return datetime.now(UTC)


def database_now(dialect: str, later_by_seconds: Any = None) -> Any:
    """The time by the database's clock, inside a statement, `later_by_seconds` later (a
    number or a bound parameter). Expiry, cleanup and leases are judged by it, so instances
    whose hosts' clocks disagree still agree on them. PostgreSQL's `now()` (the transaction's
    start); SQLite's own time, which is this host's (its database lives here), written as
    SQLAlchemy stores times there (microseconds) so that it compares with stored ones."""
    if dialect == "postgresql":
        now: Any = func.now()
        if later_by_seconds is not None:
            now = now + func.make_interval(0, 0, 0, 0, 0, 0, later_by_seconds)
        return type_coerce(now, UTCDateTime())
    later = literal("+0") if later_by_seconds is None else literal("+").concat(cast(later_by_seconds, Text))
    text = func.strftime("%Y-%m-%d %H:%M:%f", "now", later.concat(" seconds")).concat("000")
    return type_coerce(text, UTCDateTime())
