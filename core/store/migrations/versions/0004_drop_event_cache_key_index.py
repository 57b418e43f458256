"""Drop ix_generation_events_cache_key_created_at: ix_generation_events_key_sample serves
its queries, and every index on generation_events is paid for by every request.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_generation_events_cache_key_created_at", "generation_events")


def downgrade() -> None:
    op.create_index("ix_generation_events_cache_key_created_at", "generation_events", ["cache_key", "created_at"])
