"""How a generation was judged: the attempts it took (a program that failed the contract or a
fit rule is sent back to the LLM with what failed, LLM_REPAIR_ATTEMPTS times) and the fit
rules any attempt broke, so monitoring shows which model or prompt fails clients, and how.
Nullable: events recorded before say nothing.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("generation_events", sa.Column("attempts", sa.SmallInteger, nullable=True))
    op.add_column("generation_events", sa.Column("rules_broken", sa.String(200), nullable=True))
    # Only the events that broke something: few, so the index costs the other writes nothing.
    broke = sa.text("rules_broken IS NOT NULL")
    op.create_index(
        "ix_generation_events_rules_broken",
        "generation_events",
        ["created_at"],
        postgresql_where=broke,
        sqlite_where=broke,
    )


def downgrade() -> None:
    op.drop_index("ix_generation_events_rules_broken", table_name="generation_events")
    with op.batch_alter_table("generation_events") as batch:
        batch.drop_column("rules_broken")
        batch.drop_column("attempts")
