"""Rollouts: a candidate generator tried on recent profiles, or the cache pre-warmed for it
(through OpenAI's Batch API or live calls) before the switch. Three tables of Coach Cache's
own; nothing of the product's tables changes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from core.store.schema import Id, JsonDocument, UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("generator_version", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(320), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("requested", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_table(
        "rollout_batches",
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("rollout_id", Id, sa.ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("input_file_id", sa.String(128), nullable=False),
        sa.Column("lines", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("submitted_at", UTCDateTime(), nullable=False),
        sa.Column("checked_at", UTCDateTime(), nullable=True),
        sa.Column("collected_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_rollout_batches_rollout_id", "rollout_batches", ["rollout_id"])
    op.create_table(
        "rollout_programs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("rollout_id", Id, sa.ForeignKey("rollouts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=True),
        sa.Column("cache_key", sa.String(512), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("onboarding_responses", JsonDocument, nullable=False),
        sa.Column("has_paid_access", sa.Boolean, nullable=False),
        sa.Column("generator_version", sa.String(64), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("program", JsonDocument, nullable=True),
        sa.Column("size_bytes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("generated_at", UTCDateTime(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("cached_tokens", sa.Integer, nullable=True),
        sa.Column("reasoning_tokens", sa.Integer, nullable=True),
        sa.Column("used_at", UTCDateTime(), nullable=True),
    )
    op.create_index(
        "ix_rollout_programs_rollout_id_cache_key", "rollout_programs", ["rollout_id", "cache_key"], unique=True
    )
    op.create_index("ix_rollout_programs_staged", "rollout_programs", ["cache_key", "generator_version", "state"])


def downgrade() -> None:
    op.drop_table("rollout_programs")
    op.drop_table("rollout_batches")
    op.drop_table("rollouts")
