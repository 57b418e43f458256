"""alert_states: each alert rule's state and what the webhook was last told, shared by every
instance and cron run, so that an alert that starts firing or resolves is POSTed once.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from core.store.schema import UTCDateTime

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_states",
        sa.Column("rule", sa.String(32), primary_key=True),
        sa.Column("firing", sa.Boolean, nullable=False),
        sa.Column("seen", sa.Text, nullable=False),
        sa.Column("figures", sa.JSON, nullable=False),
        sa.Column("checked_at", UTCDateTime(), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.Column("notified_firing", sa.Boolean, nullable=False),
        sa.Column("claimed_by", sa.String(32), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("delivery_error", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("alert_states")
