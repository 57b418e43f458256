"""Monitoring per generator identity: hit events say which generator made the entry they
served and what its generation cost (its tokens, now kept on the entry); every event names
its model; the hourly rollup gains the generator as a dimension.

The rollup is derived data: it is rebuilt from the events (the next `refresh_rollup`
rolls every settled hour up again), so its new key needs no data migration.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

from core.store.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ROLLUP = "generation_stats_hourly"
COUNTS = {
    "requests": sa.Integer,
    "latency_ms_sum": sa.Float,
    "prompt_tokens": sa.BigInteger,
    "completion_tokens": sa.BigInteger,
    "cache_read_errors": sa.Integer,
    "cache_write_errors": sa.Integer,
    "history_errors": sa.Integer,
}


def _rollup(*columns: sa.Column) -> None:
    op.create_table(
        ROLLUP,
        sa.Column("hour", UTCDateTime(), primary_key=True),
        sa.Column("outcome", sa.String(8), primary_key=True),
        sa.Column("latency_bin_ms", sa.Integer, primary_key=True),
        *columns,
        *(sa.Column(name, kind, nullable=False) for name, kind in COUNTS.items()),
    )


def upgrade() -> None:
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("ai_coach_cache")}
    for name in ("prompt_tokens", "completion_tokens"):
        if name not in existing:  # an adopted table may have them already
            op.add_column("ai_coach_cache", sa.Column(name, sa.Integer, nullable=True))
    op.add_column("generation_events", sa.Column("model", sa.String(200), nullable=True))
    op.add_column("generation_events", sa.Column("saved_prompt_tokens", sa.Integer, nullable=True))
    op.add_column("generation_events", sa.Column("saved_completion_tokens", sa.Integer, nullable=True))
    op.drop_table(ROLLUP)
    # '' for events that do not say (recorded before generators were): key columns are NOT NULL.
    _rollup(
        sa.Column("generator_version", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("saved_prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("saved_completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("hits_without_tokens", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table(ROLLUP)
    _rollup()
    op.drop_column("generation_events", "saved_completion_tokens")
    op.drop_column("generation_events", "saved_prompt_tokens")
    op.drop_column("generation_events", "model")
    # ai_coach_cache keeps its token columns: they may be the product's own (see upgrade).
