"""generation_events.entry_expires_at and generator_version: what a miss wrote to the cache,
so that a later miss on the same key says why there was no entry (expired, invalidated, or
never cached) whether or not cleanup has deleted it since.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

from core.store.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("generation_events", sa.Column("entry_expires_at", UTCDateTime(), nullable=True))
    op.add_column("generation_events", sa.Column("generator_version", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("generation_events", "generator_version")
    op.drop_column("generation_events", "entry_expires_at")
