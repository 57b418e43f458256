"""cache_entry_fates: what last happened to each key's entry (written, not cached, invalidated,
expired), recorded when it happens, so that a miss reason never depends on the request log
or on whether cleanup has run.

The records start from what the request log says of each key's last generation: its write
(with the entry's expiry) or its failed write. Invalidations made before this revision were
not recorded per key; such a key reads as expired once its entry's time has passed.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from core.store.schema import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cache_entry_fates",
        sa.Column("cache_key", sa.String(512), primary_key=True),
        sa.Column("fate", sa.String(16), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("entry_expires_at", UTCDateTime(), nullable=True),
        sa.Column("actor", sa.String(320), nullable=True),
    )
    # Each key's last miss; events from before entry_expires_at was recorded (0007) say
    # nothing of what they wrote and are left out.
    op.execute(
        """
        INSERT INTO cache_entry_fates (cache_key, fate, recorded_at, entry_expires_at)
        SELECT e.cache_key,
               CASE WHEN e.cache_write_error THEN 'not_cached' ELSE 'written' END,
               e.created_at,
               CASE WHEN e.cache_write_error THEN NULL ELSE e.entry_expires_at END
        FROM generation_events e
        JOIN (
            SELECT cache_key, MAX(id) AS id FROM generation_events
            WHERE outcome IN ('miss', 'bypass') GROUP BY cache_key
        ) last_miss ON last_miss.id = e.id
        WHERE e.cache_write_error OR e.entry_expires_at IS NOT NULL
        """
    )


def downgrade() -> None:
    op.drop_table("cache_entry_fates")
