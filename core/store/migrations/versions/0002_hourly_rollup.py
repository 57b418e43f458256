"""Hourly rollup of generation events for the monitoring queries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from core.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generation_stats_hourly",
        sa.Column("hour", UTCDateTime(), primary_key=True),
        sa.Column("outcome", sa.String(8), primary_key=True),
        sa.Column("latency_bin_ms", sa.Integer, primary_key=True),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("latency_ms_sum", sa.Float, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("cache_read_errors", sa.Integer, nullable=False),
        sa.Column("cache_write_errors", sa.Integer, nullable=False),
        sa.Column("history_errors", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("generation_stats_hourly")
