"""Cache, program history, generation events and admin actions. The cache and history
tables are adopted where the product's database already has them (core/store/adoption.py).

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from core.store import adoption
from core.store.schema import Id, JsonDocument, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    existing = [t for t in adoption.NEEDED if sa.inspect(bind).has_table(t)]
    refused = [problem for table in existing for problem in adoption.problems(bind, table)]
    if refused:
        raise adoption.SchemaRefused(refused)
    for table in existing:
        adoption.adopt(bind, table)
    if "ai_coach_cache" not in existing:
        _create_cache()
    if "training_programs" not in existing:
        _create_programs()
    _create_own_tables()


def _create_cache() -> None:
    op.create_table(
        "ai_coach_cache",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("cache_key", sa.String(512), nullable=False, unique=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("data", JsonDocument, nullable=False),
        sa.Column("onboarding_hash", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_ai_coach_cache_expires_at", "ai_coach_cache", ["expires_at"])
    op.create_index("ix_ai_coach_cache_user_id_created_at", "ai_coach_cache", ["user_id", "created_at"])


def _create_programs() -> None:
    op.create_table(
        "training_programs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("program", JsonDocument, nullable=False),
        sa.Column("onboarding_responses", JsonDocument, nullable=False),
        sa.Column("has_paid_access", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("cache_key", sa.String(512), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.CheckConstraint("source IN ('llm', 'cache')", name="ck_training_programs_source"),
    )
    op.create_index("ix_training_programs_created_at", "training_programs", ["created_at", "id"])
    op.create_index("ix_training_programs_user_id_created_at", "training_programs", ["user_id", "created_at", "id"])


def _create_own_tables() -> None:
    op.create_table(
        "generation_events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("cache_key", sa.String(512), nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("miss_reason", sa.String(32), nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("llm_latency_ms", sa.Float, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("cache_read_error", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("cache_write_error", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("history_error", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("error", sa.Text, nullable=True),
        sa.CheckConstraint("outcome IN ('hit', 'miss', 'bypass', 'error')", name="ck_generation_events_outcome"),
    )
    op.create_index("ix_generation_events_created_at", "generation_events", ["created_at"])
    op.create_index("ix_generation_events_cache_key_created_at", "generation_events", ["cache_key", "created_at"])

    op.create_table(
        "admin_actions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(320), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(512), nullable=True),
        sa.Column("rows_affected", sa.Integer, nullable=False),
        sa.Column("bytes_reclaimed", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_admin_actions_created_at", "admin_actions", ["created_at"])


def downgrade() -> None:
    # The cache and history tables may have been adopted, not created: they stay.
    op.drop_table("admin_actions")
    op.drop_table("generation_events")
