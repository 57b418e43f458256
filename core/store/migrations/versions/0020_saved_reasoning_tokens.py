"""What a hit saved, in every kind of token a generation records: the reasoning tokens of the
generation that made the entry served, beside the input, output and cached input it saved
already, so that the event and the rollup keep a `saved_` column for each kind of billed
token (core.prices.Billed) and are built from that one list. Nullable on the events (hits
recorded before say nothing); 0 in hours rolled up before, as events that do not say sum to.
Both tables are Coach Cache's own (never adopted), as in 0011.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

COLUMNS = {
    "generation_events": sa.Column("saved_reasoning_tokens", sa.Integer, nullable=True),
    "generation_stats_hourly": sa.Column("saved_reasoning_tokens", sa.BigInteger, nullable=False, server_default="0"),
}


def upgrade() -> None:
    for table, column in COLUMNS.items():
        op.add_column(table, column)


def downgrade() -> None:
    for table, column in COLUMNS.items():
        op.drop_column(table, column.name)
