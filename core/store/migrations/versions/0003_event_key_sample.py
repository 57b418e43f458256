"""generation_events.key_sample: replay a uniform sample of keys through an index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DIGEST_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def upgrade() -> None:
    op.add_column("generation_events", sa.Column("key_sample", sa.SmallInteger, nullable=False, server_default="0"))
    # Existing rows: the place of the key's last character in the digest alphabet.
    postgres = op.get_bind().dialect.name == "postgresql"
    position, larger = ("strpos", "greatest") if postgres else ("instr", "max")
    last_char = "substr(cache_key, length(cache_key), 1)"
    op.execute(
        f"UPDATE generation_events SET key_sample = {larger}({position}('{DIGEST_ALPHABET}', {last_char}) - 1, 0)"
    )
    op.create_index(
        "ix_generation_events_key_sample", "generation_events", ["key_sample", "cache_key", "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_generation_events_key_sample", "generation_events")
    op.drop_column("generation_events", "key_sample")
