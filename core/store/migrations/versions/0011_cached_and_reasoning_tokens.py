"""Cached input and reasoning tokens: the parts of a call's prompt and completion tokens
that OpenAI bills apart (cached input at a fraction of the input price) or reports apart
(reasoning, billed as output). Recorded wherever prompt_tokens is: each event (and, for a
hit, the cached tokens its entry's generation saved), the hourly rollup's sums, the cache
entry and the history row. All nullable on the raw tables, so adopted tables take them
without a rewrite; the rollup's sums are 0 for hours rolled up before, as events that do
not say sum to.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

PARTS = ("cached_tokens", "reasoning_tokens")
# An event's (and the rollup's sums of them): a hit's entry's cached tokens are what it saved.
EVENT_PARTS = (*PARTS, "saved_cached_tokens")


def upgrade() -> None:
    for table in ("ai_coach_cache", "training_programs"):
        existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}
        for name in PARTS:
            if name not in existing:  # an adopted table may have them already
                op.add_column(table, sa.Column(name, sa.Integer, nullable=True))
    for name in EVENT_PARTS:
        op.add_column("generation_events", sa.Column(name, sa.Integer, nullable=True))
        op.add_column("generation_stats_hourly", sa.Column(name, sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    for name in reversed(EVENT_PARTS):
        op.drop_column("generation_stats_hourly", name)
        op.drop_column("generation_events", name)
    # ai_coach_cache and training_programs keep theirs: they may be the product's own (see upgrade).
