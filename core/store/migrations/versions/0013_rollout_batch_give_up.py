"""A rollout batch can be left behind: the consecutive checks the server answered 404 for it
(after a change of API key or organisation it never will again; given up after three), and
when an operator asked for it to be cancelled (its keys can be planned again at once; what it
ran is still collected).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from core.store.schema import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rollout_batches", sa.Column("not_found_checks", sa.Integer, nullable=False, server_default="0"))
    op.add_column("rollout_batches", sa.Column("cancel_requested_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rollout_batches") as batch:
        batch.drop_column("cancel_requested_at")
        batch.drop_column("not_found_checks")
